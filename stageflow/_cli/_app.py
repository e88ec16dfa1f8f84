"""The ``stageflow`` argument parser and :func:`main`."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO, cast

from stageflow._cli._commands import add_parsers
from stageflow._cli._common import (
    CommandError,
    ExitCode,
    FollowStderr,
    OutputError,
    Streams,
    exit_codes_epilog,
)
from stageflow._cli._registry import STAGES_HINT, UNREGISTERED
from stageflow._cli._run import add_run_parser
from stageflow._cli._store import add_store_parsers
from stageflow._cli._ui import add_ui_parser
from stageflow._engine._backend import exit_request, is_interrupt
from stageflow._errors import PipelineValidationError, StageflowError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``stageflow`` parser with every subcommand."""
    from stageflow import __version__

    parser = argparse.ArgumentParser(
        prog="stageflow",
        description="Run, check, draw and test stageflow pipelines (JSON graphs of stages).",
        epilog=exit_codes_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"stageflow {__version__}")
    subparsers = parser.add_subparsers(
        title="commands", metavar="COMMAND", required=True, parser_class=_CommandParser
    )
    add_run_parser(subparsers)
    add_parsers(subparsers)
    add_store_parsers(subparsers)
    add_ui_parser(subparsers)
    return parser


def _configure_logging(args: argparse.Namespace) -> None:
    """Send log lines to standard error (the library itself never configures logging).

    Without options only warnings and errors are written: ``node.started``
    lines are for those who ask (``--log-format`` or ``--log-level``), and so
    are tracebacks (``--traceback`` or ``--log-level debug``).
    """
    from stageflow import logging as stageflow_logging

    log_format = getattr(args, "log_format", None)
    level = getattr(args, "log_level", None) or ("info" if log_format else "warning")
    stageflow_logging.configure(
        format="json" if log_format == "json" else "console",
        level=level,
        stream=cast(TextIO, FollowStderr()),
        tracebacks=bool(getattr(args, "traceback", False)) or level == "debug",
    )


def _report(exc: StageflowError, io: Streams, *, stages_given: bool = False) -> int:
    if isinstance(exc, PipelineValidationError):
        where = exc.source or "pipeline"
        for problem in exc.problems:
            io.warn(f"{where}: {problem.location}: {problem.message}")
        # With --stages given the hint to pass it misleads: the name is what is wrong.
        if not stages_given and any(UNREGISTERED in p.message for p in exc.problems):
            io.warn(STAGES_HINT)
        return ExitCode.USAGE
    io.warn(str(exc))
    if isinstance(exc, CommandError):
        if exc.detail:
            print(exc.detail, file=io.err)
        return exc.exit_code
    return ExitCode.USAGE


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``, with a command's files before, between and after its options.

    ``stageflow validate A.json --stages s.py B.json`` is read as two files:
    what the command's list of files (its ``intermixed`` default) did not
    take is added to it, with the words after a ``--`` (files whose names
    start with ``-``). Anything else left over is a usage error, reported
    by argparse as usual.
    """
    args, extras = parser.parse_known_args(argv)
    target = getattr(args, "intermixed", None)
    # After "--" every word is a file, one that starts with "-" too.
    cut = extras.index("--") if "--" in extras else len(extras)
    options, files = extras[:cut], extras[cut + 1 :]
    if extras and target and not any(e.startswith("-") and e != "-" for e in options):
        getattr(args, target).extend(options + files)
        return args
    if extras:
        # Said by the command's own parser, with its usage: the top-level
        # usage ("stageflow COMMAND ...") does not say what `run` takes.
        command: argparse.ArgumentParser = getattr(args, "command_parser", parser)
        command.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


class _CommandParser(argparse.ArgumentParser):
    """A (sub)command's parser, which puts itself in the arguments it parses.

    The innermost command's parser is the one left (``sessions list``), so
    :func:`_parse` can report a word left over with that command's usage.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.set_defaults(command_parser=self)


def _drop_output() -> None:
    """Point standard output at the null device: what is left in its buffer cannot be written.

    Python flushes it at exit; that would fail again, with a traceback.
    """
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``stageflow`` command line and return its exit code.

    Args:
        argv: the arguments after the program name (``sys.argv[1:]`` if ``None``).

    Returns:
        An :class:`~stageflow.cli.ExitCode` value.
    """
    parser = build_parser()
    try:
        args = _parse(parser, sys.argv[1:] if argv is None else list(argv))
    except SystemExit as exc:  # --help, --version and usage errors end here
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    io = Streams.current()
    try:
        _configure_logging(args)
        code: int = args.handler(args, io)
        io.flush()  # a full disk or a closed pipe is told now, not at exit
    except OutputError as exc:
        _drop_output()
        return _report(exc, io)
    except StageflowError as exc:
        return _report(exc, io, stages_given=bool(getattr(args, "stages_modules", None)))
    except BrokenPipeError:
        # The reader went away (`stageflow schema | head`): stop quietly.
        _drop_output()
        return ExitCode.BROKEN_PIPE
    except BaseException as exc:
        # Ctrl-C, also when trio delivers it in a group with the cancellations
        # of the other tasks; anything else goes on up.
        if not is_interrupt(exc):
            # A stage's sys.exit() ends the program as it asks, without the
            # task groups' traceback around it.
            exiting = exit_request(exc)
            if exiting is not None and exiting is not exc:
                raise exiting from None
            raise
        io.warn("interrupted")
        return ExitCode.INTERRUPTED
    return int(code)
