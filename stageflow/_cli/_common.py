"""What every command shares: exit codes, the command error, output streams, JSON input."""

from __future__ import annotations

import argparse
import enum
import importlib
import io
import json
import math
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO, cast

import attrs
import yaml

from stageflow._errors import StageflowError, printable_text
from stageflow._guard import (
    BudgetError,
    is_yaml_path,
    parse_json_text,
    parse_yaml_text,
    read_text_file,
    yaml_problem,
)
from stageflow._pipeline import plain_document

__all__ = [
    "LOG_LEVELS",
    "EXIT_CODE_MEANINGS",
    "CommandError",
    "ExitCode",
    "FollowStderr",
    "OutputError",
    "Streams",
    "add_logging_options",
    "dump_json",
    "exit_codes_epilog",
    "number",
    "optional_module",
    "read_json_argument",
]


def number(
    *, least: float, above: bool = False, most: float | None = None, whole: bool = False
) -> Callable[[str], float]:
    """An argparse ``type``: a finite number from ``least`` (or ``above`` it) to ``most``.

    A value out of range is a usage error (exit 2) that says the range,
    not a traceback from where the number is used.
    """

    def parse(text: str) -> float:
        try:
            value: float = int(text) if whole else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a {'whole number' if whole else 'number'}"
            ) from None
        low = value > least if above else value >= least
        if not (math.isfinite(value) and low and (most is None or value <= most)):
            bound = f"above {least:g}" if above else f"at least {least:g}"
            top = f" and at most {most:g}" if most is not None else ""
            raise argparse.ArgumentTypeError(f"{text!r} is out of range: use a number {bound}{top}")
        return value

    return parse


class ExitCode(enum.IntEnum):
    """The exit status of ``stageflow``: what happened, for scripts and CI."""

    OK = 0
    """The command did what was asked: the session completed, every file is valid, ..."""
    FAILED = 1
    """The session failed, or a test case failed or could not run."""
    USAGE = 2
    """Bad command line, invalid pipeline, payload or input, stages module that cannot be
    imported, two stages with one name."""
    CANCELLED = 3
    """The session was cancelled or timed out."""
    NEEDS_INPUT = 4
    """The session waited for an input type that had no scripted ``--input`` left; it
    was cancelled."""
    UNAVAILABLE = 5
    """A feature the command needs is not installed in this stageflow."""
    OUTPUT_FAILED = 74
    """Standard output could not be written (a full disk, a file that refuses writes); the
    results are lost, whatever the command did."""
    INTERRUPTED = 130
    """Interrupted with Ctrl-C."""
    BROKEN_PIPE = 141
    """The reader of standard output went away (``stageflow ... | head``), as if killed
    by SIGPIPE."""


EXIT_CODE_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "done: the session completed, every file is valid, every case passed",
    ExitCode.FAILED: "the session failed, or a test case failed or could not run",
    ExitCode.USAGE: (
        "usage error; invalid pipeline, payload or input; a stages module that cannot be "
        "imported; two stages with one name"
    ),
    ExitCode.CANCELLED: "the session was cancelled or timed out",
    ExitCode.NEEDS_INPUT: (
        "the session waited for an input type with no scripted --input left (it was cancelled)"
    ),
    ExitCode.UNAVAILABLE: "a feature the command needs is not installed in this stageflow",
    ExitCode.OUTPUT_FAILED: "standard output could not be written (a full disk, ...)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
    ExitCode.BROKEN_PIPE: "standard output was closed early (| head)",
}
"""What each exit code means: the one wording of ``--help`` epilogs and docs/cli.md."""


def exit_codes_epilog(codes: Iterable[ExitCode] = tuple(ExitCode)) -> str:
    """The ``exit codes:`` epilog of a command's ``--help``, for the codes it can return."""
    lines = ["exit codes:"]
    lines.extend(f"{int(code):>3}  {EXIT_CODE_MEANINGS[code]}" for code in codes)
    return "\n".join(lines) + "\n"


class CommandError(StageflowError):
    """A command cannot go on; the message says what, where and how to fix it.

    Attributes:
        exit_code: the process exit status to use.
        detail: extra text printed after the message (a traceback, a list).
    """

    def __init__(
        self, message: str, *, exit_code: ExitCode = ExitCode.USAGE, detail: str | None = None
    ) -> None:
        self.exit_code = exit_code
        self.detail = detail
        super().__init__(message)


class OutputError(CommandError):
    """Standard output refused a write (not a closed pipe, which ends quietly with 141)."""

    def __init__(self, exc: OSError) -> None:
        super().__init__(
            f"cannot write the output: {exc.strerror or exc}; the results are lost: free "
            "some space, or send the output elsewhere",
            exit_code=ExitCode.OUTPUT_FAILED,
        )


@attrs.frozen
class Streams:
    """Where a command writes: results to ``out``, diagnostics to ``err``.

    ``out`` is ``None`` when the process started with standard output closed
    (``>&-``): the results are dropped, and the command still runs.
    """

    out: TextIO | None
    err: TextIO

    @classmethod
    def current(cls) -> Streams:
        """The process's ``sys.stdout`` as it is now, and its standard error as it is at each write.

        Diagnostics go where the log lines go (:class:`FollowStderr`): above
        the live view while it redirects ``sys.stderr``, and nowhere with
        standard error closed (``print(file=None)`` wrote them to standard
        output, among the results).
        """
        return cls(sys.stdout, cast(TextIO, FollowStderr()))

    def print(self, text: str = "") -> None:
        """Write a line of results."""
        self.write(text + "\n")

    def write(self, text: str) -> None:
        """Write results (nothing when standard output is closed).

        Raises:
            OutputError: standard output refused the text (a full disk, ...).
            BrokenPipeError: its reader went away (``| head``).
        """
        if self.out is None:
            return
        try:
            self.out.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputError(exc) from exc

    def flush(self) -> None:
        """Flush the results written so far (see :meth:`write` for what it raises)."""
        if self.out is None:
            return
        try:
            self.out.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputError(exc) from exc

    def warn(self, text: str) -> None:
        """Write a line of diagnostics: one line, escaped as log lines are.

        A message may quote a stage's or a pack's exception, whose line breaks
        would start lines that look like stageflow's own, and whose escape
        sequences a terminal would act on.
        """
        print(f"stageflow: {printable_text(text)}", file=self.err)


def dump_json(value: Any) -> str:
    r"""JSON text for output: indented, keys in their given order, UTF-8 kept readable.

    Text UTF-8 cannot carry (a file name that is not UTF-8 comes from the OS
    with lone surrogates) is written with ``\u`` escapes instead, so the
    output stays valid JSON in valid UTF-8.
    """
    text = json.dumps(value, indent=2, ensure_ascii=False)
    try:
        text.encode()
    except UnicodeEncodeError:
        return json.dumps(value, indent=2)
    return text


def read_json_argument(text: str, *, option: str) -> Any:
    """Parse an option value: JSON text, or ``@FILE`` naming a JSON (or YAML) file.

    Raises:
        CommandError: the file cannot be read or the text is not valid JSON/YAML.
    """
    source = option
    if text.startswith("@"):
        if not text[1:]:  # Path("") is the current directory: "cannot read '.'"
            raise CommandError(
                f"{option}: nothing follows '@'; pass @FILE with the path of a JSON (or YAML) "
                "file, or the JSON text itself"
            )
        file = Path(text[1:])
        source = f"{option} {text}"
        try:
            text = read_text_file(file)
        except OSError as exc:
            raise CommandError(
                f"{option}: cannot read {str(file)!r}: {exc.strerror or exc}; "
                "check the path after '@'"
            ) from exc
        except UnicodeDecodeError as exc:
            raise CommandError(
                f"{source}: the file is not UTF-8 text ({exc.reason}); save it as UTF-8"
            ) from exc
        except BudgetError as exc:
            raise CommandError(f"{source}: not read: {exc}") from exc
        if not text.strip():  # JSON said "Expecting value", YAML read it as null
            raise CommandError(f"{source}: the file is empty; write a JSON value in it")
        if is_yaml_path(file):
            try:
                return _plain(parse_yaml_text(text), source)
            except yaml.YAMLError as exc:
                raise CommandError(f"{source}: {yaml_problem(exc)}; fix the file") from exc
            except BudgetError as exc:
                raise CommandError(f"{source}: not read: {exc}") from exc
    try:
        return _plain(parse_json_text(text), source)
    except BudgetError as exc:
        raise CommandError(f"{source}: not read: {exc}") from exc
    except json.JSONDecodeError as exc:
        fix = (
            "fix the file"
            if source != option
            else "quote JSON strings (e.g. '\"yes\"') or pass @FILE"
        )
        raise CommandError(
            f"{source}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}; {fix}"
        ) from exc


def _plain(value: Any, source: str) -> Any:
    """``value`` if JSON can carry it (a YAML date, NaN, ... cannot), named where it is."""
    plain, problem = plain_document(value)
    if problem is not None:
        raise CommandError(f"{source}: {problem.location}: {problem.message}")
    return plain


def optional_module(name: str, option: str) -> ModuleType:
    """Import a stageflow module that may not be part of this install yet.

    Raises:
        CommandError: (exit code ``UNAVAILABLE``) the module is not there.
    """
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        raise CommandError(
            f"{option} needs {name}, which this stageflow does not have; "
            "upgrade stageflow, or leave the option out",
            exit_code=ExitCode.UNAVAILABLE,
        ) from exc


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def add_logging_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--log-format`` and ``--log-level`` to a command that runs sessions."""
    group = parser.add_argument_group("logs (on standard error)")
    group.add_argument(
        "--log-format",
        choices=("json", "console"),
        help="one JSON object per line, or lines for people (default: console)",
    )
    group.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        help="the lowest level written (default: info with --log-format, else warning); "
        "debug also writes tracebacks",
    )
    group.add_argument(
        "--traceback",
        action="store_true",
        help="write the traceback of a failed stage with its error line",
    )


class FollowStderr(io.TextIOBase):
    """A text stream that writes to whatever ``sys.stderr`` is at the time.

    Log lines then follow a redirection made after logging was configured
    (the live view's, or a test's capture).
    """

    # Python sets sys.stderr to None when the process starts with it closed
    # (``2>&-``): what would go there is dropped, and the command still runs.

    def write(self, text: str) -> int:
        """Write ``text`` to the current standard error (dropped if it is closed)."""
        stream = sys.stderr
        return len(text) if stream is None else stream.write(text)

    def flush(self) -> None:
        """Flush the current standard error."""
        if sys.stderr is not None:
            sys.stderr.flush()

    def isatty(self) -> bool:
        """Whether the current standard error is a terminal."""
        return sys.stderr is not None and sys.stderr.isatty()
