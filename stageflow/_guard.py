"""Budgets for input from outside: how large, how deep and how nested anything may be.

Every parser and walker that reads a document, a value or a snapshot takes its
bounds from here, so one set of numbers (documented in ``docs/limits.md``)
holds everywhere: a hostile document gets a typed error in bounded time and
memory instead of a ``RecursionError``, a ``ValueError`` from ``json.dumps``
or a parse that never ends. A leaf module: it imports nothing from stageflow.
"""

from __future__ import annotations

import json
import os
from os import PathLike
from typing import Any, Final

import yaml

__all__ = [
    "MAX_DEPTH",
    "MAX_DOCUMENT_BYTES",
    "MAX_INT_DIGITS",
    "MAX_NESTING",
    "MAX_VALUES",
    "MAX_YAML_NODES",
    "BudgetError",
    "DuplicateKeyError",
    "SAFE_INT_BITS",
    "int_too_large",
    "is_document_path",
    "is_yaml_path",
    "parse_json_text",
    "read_text_file",
    "parse_yaml_text",
    "yaml_problem",
]

MAX_DEPTH: Final = 256
"""How deeply containers may nest in any JSON value stageflow accepts or stores."""

MAX_INT_DIGITS: Final = 4300
"""Most decimal digits of an integer: what ``json.dumps`` can write (CPython's default
``sys.get_int_max_str_digits()``), so every stored value stays serialisable."""

MAX_NESTING: Final = 64
"""Most levels of nested structure a document may declare or a snapshot hold:
subpipelines inside subpipelines, frames (branches, map items, subpipeline runs)
inside frames. Also the largest ``limits.max_depth``."""

MAX_DOCUMENT_BYTES: Final = 16 * 1024 * 1024
"""Largest JSON or YAML text a pipeline or case file may be, in bytes of UTF-8."""

MAX_VALUES: Final = 10_000_000
"""Most values (containers and scalars) a JSON value may hold once written out:
a list or object shared many times over counts each time, as JSON writes it
(``x = [x, x]`` forty levels deep is 2**41 values, refused at once)."""

MAX_YAML_NODES: Final = 1_000_000
"""Most values a YAML text may expand to, aliases counted at their expanded size
(a "billion laughs" document is refused before it is built)."""

# 10 ** MAX_INT_DIGITS has MAX_INT_DIGITS + 1 digits: the first integer too large.
_INT_LIMIT: Final = 10**MAX_INT_DIGITS
# Below this many bits an integer has fewer than MAX_INT_DIGITS digits (the fast path).
_SAFE_BITS: Final = int(MAX_INT_DIGITS * 3.32)
# An int with fewer bits is never too large (see int_too_large).
SAFE_INT_BITS: Final = _SAFE_BITS


class BudgetError(Exception):
    """A text or value is over one of the budgets; the message says which and how to fix it.

    Internal: callers turn it into the typed error of the document at hand.
    """


class DuplicateKeyError(BudgetError):
    """A JSON object in the text has the same key twice; ``location`` is the object's path.

    ``json.loads`` keeps the last value without a word, so a pipeline or case
    file would run with the other one ignored.
    """

    def __init__(self, key: str, location: str) -> None:
        self.key = key
        self.location = location
        super().__init__(
            f"the object at {location} has the key {key!r} more than once (JSON keeps only "
            "the last, so the others would be ignored); keep one of them"
        )


class _Duplicate(Exception):
    """Internal: the hook found a duplicate key; the text is read again to locate it."""


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook``: the object, refusing a key it has twice."""
    made = dict(pairs)
    if len(made) != len(pairs):
        raise _Duplicate
    return made


class _Pairs(list[tuple[str, Any]]):
    """An object's pairs kept as written, to find where a key is repeated."""


def _located_duplicate(text: str) -> DuplicateKeyError:
    """The first object (in text order) with a repeated key, with its ``$.path``."""
    stack: list[tuple[str, Any]] = [("$", json.loads(text, object_pairs_hook=_Pairs))]
    while stack:
        where, value = stack.pop()
        if isinstance(value, _Pairs):
            seen: set[str] = set()
            for key, _ in value:
                if key in seen:
                    return DuplicateKeyError(key, where)
                seen.add(key)
            stack.extend((f"{where}.{key}", item) for key, item in reversed(value))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", item) for i, item in reversed(list(enumerate(value))))
    raise AssertionError("a duplicate key was found, then not")  # pragma: no cover


def int_too_large(number: int) -> bool:
    """Whether an integer has more than :data:`MAX_INT_DIGITS` decimal digits."""
    if number.bit_length() < _SAFE_BITS:
        return False
    return abs(number) >= _INT_LIMIT


def _check_size(text: str) -> None:
    # Characters are at most 4 bytes: only a text that might be too large is encoded.
    if len(text) * 4 > MAX_DOCUMENT_BYTES and len(text.encode()) > MAX_DOCUMENT_BYTES:
        raise _too_large()


def _too_large() -> BudgetError:
    return BudgetError(
        f"the text is over {MAX_DOCUMENT_BYTES // (1024 * 1024)} MiB, the most stageflow "
        "reads; keep large data out of it (pass a path or URL to the data instead), or "
        "split it (a pipeline into subpipelines, a case file into several)"
    )


def is_yaml_path(path: str | PathLike[str]) -> bool:
    """Whether a document file is read as YAML: its name ends in ``.yaml`` or ``.yml``.

    In any case (``PIPELINE.YAML`` too); any other file is read as JSON.
    """
    return os.fspath(path).lower().endswith((".yaml", ".yml"))


def is_document_path(path: str | PathLike[str]) -> bool:
    """Whether a file in a directory of documents is one: ``.json``, ``.yaml`` or ``.yml``."""
    return is_yaml_path(path) or os.fspath(path).lower().endswith(".json")


def read_text_file(path: str | PathLike[str]) -> str:
    """A document file's text, read no further than the budget allows.

    At most :data:`MAX_DOCUMENT_BYTES` bytes are read (a huge file, or an
    endless one such as ``/dev/zero``, is refused without being read whole),
    then decoded as UTF-8; a leading byte order mark (an editor's "UTF-8 with
    BOM") is dropped, as JSON parsers may.

    Raises:
        OSError: the file cannot be read.
        BudgetError: it is larger than :data:`MAX_DOCUMENT_BYTES`.
        UnicodeDecodeError: it is not UTF-8 text.
    """
    with open(path, "rb") as file:
        data = file.read(MAX_DOCUMENT_BYTES + 1)
    if len(data) > MAX_DOCUMENT_BYTES:
        raise _too_large()
    return data.decode("utf-8-sig")


def parse_json_text(text: str) -> Any:
    """``json.loads`` within the budgets.

    Raises:
        json.JSONDecodeError: the text is not JSON (the caller locates it).
        DuplicateKeyError: an object has a key twice (``json.loads`` would
            keep the last silently).
        BudgetError: too large, nested too deeply to parse, or an integer with
            too many digits.
    """
    _check_size(text)
    try:
        return json.loads(text, object_pairs_hook=_unique)
    except json.JSONDecodeError:
        raise
    except _Duplicate:
        raise _located_duplicate(text) from None
    except RecursionError:
        raise BudgetError(
            f"the text nests arrays and objects more than {MAX_DEPTH} levels deep; flatten it"
        ) from None
    except ValueError as exc:  # CPython's limit on the digits of an integer
        raise BudgetError(
            f"it has an integer of more than {MAX_INT_DIGITS} digits ({exc}); "
            "write such a number as a string"
        ) from None


def parse_yaml_text(text: str) -> Any:
    """``yaml.safe_load`` within the budgets, aliases counted at their expanded size.

    The text is first read as a stream of parser events (iterative, linear in
    the text), which bounds the nesting and the expanded size; only then is it
    built. Aliases are allowed within the budget.

    Raises:
        yaml.YAMLError: the text is not YAML.
        BudgetError: too large, too deep, or expanding to too many values.
    """
    _check_size(text)
    _measure_yaml(text)
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except ValueError as exc:  # an integer with too many digits
        raise BudgetError(
            f"it has an integer of more than {MAX_INT_DIGITS} digits ({exc}); "
            "quote such a number to make it a string"
        ) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with the same key twice.

    PyYAML keeps the last value without a word. Keys a merge (``<<: *base``)
    brings in may be overridden, as YAML means them to be.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    repeated = key in seen
                except TypeError:  # unhashable: SafeLoader refuses it itself
                    continue
                if repeated:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found the key {key!r} more than once (YAML would keep only the last, "
                        "so the others would be ignored); keep one of them",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """Why ``text`` is not YAML, on one line: ``not valid YAML at line L column C: ...``.

    PyYAML's own text spans several lines (a copy of the line with a caret,
    about an ``"<unicode string>"``), which breaks the one line each problem
    gets and names no file.
    """
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        what = ": ".join(part for part in (exc.context, exc.problem) if part)
    else:
        where, what = "", str(exc)
    return f"not valid YAML{where}: {' '.join(what.split())}"


def _measure_yaml(text: str) -> None:
    """Walk the events of ``text``, raising :class:`BudgetError` when over a budget."""
    # For each anchor: (values it expands to, levels it nests, characters of text in it).
    anchors: dict[str, tuple[int, int, int]] = {}
    # For each open collection: [anchor, values before it, its depth, deepest
    # level inside, characters before it].
    open_: list[list[Any]] = []
    values = 0
    deepest = 0
    chars = 0

    def add(count: int, height: int, length: int) -> None:
        nonlocal values, deepest, chars
        values += count
        if values > MAX_YAML_NODES:
            raise BudgetError(
                f"the YAML expands to more than {MAX_YAML_NODES:,} values (aliases count as "
                "often as they are used); repeat less through aliases, or split the document"
            )
        chars += length
        if chars > MAX_DOCUMENT_BYTES:
            raise BudgetError(
                f"the YAML expands to more than {MAX_DOCUMENT_BYTES:,} characters of text "
                "(aliases count as often as they are used), the most a document may hold; "
                "repeat long text less through aliases, or keep it out of the document"
            )
        level = len(open_) + height
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            raise BudgetError(
                f"the YAML nests more than {MAX_DEPTH} levels deep (aliases included); flatten it"
            )
        if open_:
            open_[-1][3] = max(open_[-1][3], level)

    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.ScalarEvent):
            add(1, 0, len(event.value))
            if event.anchor is not None:
                anchors[event.anchor] = (1, 0, len(event.value))
        elif isinstance(event, yaml.AliasEvent):
            count, height, length = anchors.get(event.anchor or "", (1, 0, 0))
            add(count, height, length)
        elif isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
            add(1, 1, 0)
            open_.append([event.anchor, values - 1, len(open_) + 1, len(open_) + 1, chars])
        elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
            anchor, before, level, inside, chars_before = open_.pop()
            if open_:
                open_[-1][3] = max(open_[-1][3], inside)
            if anchor is not None:
                anchors[anchor] = (values - before, inside - level + 1, chars - chars_before)
