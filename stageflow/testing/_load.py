"""Reading case files: parse, validate against the schema, structure into cases."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import cattrs
import jsonschema

from stageflow import Problem
from stageflow._guard import BudgetError, is_yaml_path, read_text_file
from stageflow._json import a_json_type
from stageflow._pipeline import (
    file_path,
    load_schema,
    parse_document,
    plain_document,
    schema_error_message,
)
from stageflow._specs import DocumentSchema
from stageflow._stage_modules import is_file_ref, split_stages_ref
from stageflow.testing._model import (
    Case,
    CaseLimits,
    CaseValidationError,
    ErrorExpectation,
    EventExpectation,
    Expectations,
    MockError,
    ScriptedInput,
    StageMock,
    check_list,
)

__all__ = ["case_from_dict", "load_cases"]

SCHEMA_NAME = "test-case"

_converter = cattrs.Converter(forbid_extra_keys=True)


@functools.cache
def _validator() -> DocumentSchema:
    return DocumentSchema(load_schema(SCHEMA_NAME))


def _where(path: Iterable[Any]) -> str:
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _schema_problem(doc: Any, error: jsonschema.ValidationError) -> Problem:
    path = list(error.absolute_path)
    subject = "the case file"
    if len(path) >= 2 and path[0] == "cases" and isinstance(path[1], int):
        try:
            name = doc["cases"][path[1]]["name"]
        except (KeyError, IndexError, TypeError):
            name = None
        subject = f"case {name!r}" if isinstance(name, str) else f"case #{path[1]}"
    if error.validator == "oneOf" and path == ["pipeline"]:
        message = "'pipeline' must be a path to a pipeline file or a pipeline document (an object)"
    else:
        message = schema_error_message(error, subject)
    return Problem(_where(path), message)


def load_cases(
    path: str | PathLike[str], *, stages_modules: Sequence[str] = ()
) -> tuple[Case, ...]:
    """Read every case of a case file (``.json``, or ``.yaml`` / ``.yml``).

    Args:
        path: the case file.
        stages_modules: more stage modules for every case, after the file's own
            ``stages`` (module names, or ``.py`` paths relative to the current
            directory).

    Returns:
        The cases, in file order; their ``pipeline`` paths are resolved
        relative to the case file.

    Raises:
        CaseValidationError: the file is not valid JSON/YAML or breaks the
            schema; every problem is listed with its location.
        OSError: the file cannot be read.
        TypeError: ``path`` is not a path, or ``stages_modules`` is one name
            or path, not a list.
    """
    check_list("load_cases", "stages_modules", stages_modules)
    file = file_path("load_cases", path)
    try:
        text = read_text_file(file)
    except UnicodeDecodeError as exc:
        raise CaseValidationError(
            [Problem("$", f"the file is not UTF-8 text ({exc.reason}); save it as UTF-8")],
            source=str(file),
        ) from exc
    except BudgetError as exc:
        raise CaseValidationError([Problem("$", f"not read: {exc}")], source=str(file)) from exc
    document = parse_document(
        text,
        source=str(file),
        yaml_=is_yaml_path(file),
        error=CaseValidationError,
    )
    return cases_from_document(document, file=file, stages_modules=stages_modules)


def cases_from_document(
    document: Any, *, file: Path | None = None, stages_modules: Sequence[str] = ()
) -> tuple[Case, ...]:
    """Validate a parsed case-file document and build its cases (see :func:`load_cases`)."""
    source = str(file) if file is not None else None
    if not isinstance(document, Mapping):
        raise CaseValidationError(
            [
                Problem(
                    "$",
                    f"a case file is an object, got {a_json_type(document)}; start from "
                    '{"pipeline": "pipeline.json", "cases": [{"name": ..., "expect": {...}}]}',
                )
            ],
            source=source,
        )
    if "cases" not in document and "nodes" in document and "entry" in document:
        name = file.name if file is not None else "pipeline.json"
        raise CaseValidationError(
            [
                Problem(
                    "$",
                    "this looks like a pipeline (it has 'entry' and 'nodes'), not a case file; "
                    "pass a case file that names it: "
                    f'{{"pipeline": "{name}", "cases": [{{"name": ..., "payload": {{...}}, '
                    '"expect": {...}}]} (see docs/testing.md)',
                )
            ],
            source=source,
        )
    # NaN, infinities (1e999 in JSON, .inf in YAML), dates, ...: a case's times
    # must be numbers it can wait for, and its payloads must be sendable.
    document, non_json = plain_document(document)
    if non_json is not None:
        raise CaseValidationError([non_json], source=source)
    errors = sorted(
        _validator().iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path]
    )
    if errors:
        raise CaseValidationError([_schema_problem(document, e) for e in errors], source=source)
    problems: list[Problem] = []
    first: dict[str, int] = {}
    for i, raw in enumerate(document["cases"]):
        if raw["name"] in first:
            problems.append(
                Problem(
                    f"$.cases[{i}].name",
                    f"case name {raw['name']!r} is used twice (first at "
                    f"$.cases[{first[raw['name']]}]); give each case a unique name",
                )
            )
        else:
            first[raw["name"]] = i
    if problems:
        raise CaseValidationError(problems, source=source)

    base = file.parent if file is not None else Path.cwd()
    pipeline: Path | Mapping[str, Any]
    if isinstance(document["pipeline"], str):
        pipeline = (base / document["pipeline"]).resolve()
    else:
        pipeline = document["pipeline"]
    stages = document.get("stages", ())
    stages = (stages,) if isinstance(stages, str) else tuple(stages)
    # Paths in the file are relative to the file; extra modules are as given.
    stages = tuple(_relative_to(s, base) for s in stages) + tuple(stages_modules)
    file_mocks = document.get("mocks", {})
    file_limits = document.get("limits", {})
    return tuple(
        case_from_dict(
            raw,
            pipeline=pipeline,
            stages=stages,
            mocks=file_mocks,
            limits=file_limits,
            file=file,
            index=i,
        )
        for i, raw in enumerate(document["cases"])
    )


def _relative_to(ref: str, base: Path) -> str:
    module, attr = split_stages_ref(ref)
    if is_file_ref(module) and "\0" not in module:  # with a NUL the loader says what is wrong
        resolved = str((base / module).resolve())
        return f"{resolved}:{attr}" if attr else resolved
    return ref


def case_from_dict(
    raw: Mapping[str, Any],
    *,
    pipeline: Path | Mapping[str, Any],
    stages: tuple[str, ...] = (),
    mocks: Mapping[str, Any] | None = None,
    limits: Mapping[str, Any] | None = None,
    file: Path | None = None,
    index: int = 0,
) -> Case:
    """Build one case from its (schema-valid) JSON object and the file-level defaults."""
    merged_mocks = {**(mocks or {}), **raw.get("mocks", {})}
    merged_limits = {**(limits or {}), **raw.get("limits", {})}
    expect = raw.get("expect", {})
    return Case(
        name=raw["name"],
        pipeline=pipeline,
        description=raw.get("description", ""),
        stages=stages,
        payload=raw.get("payload", {}),
        inputs=tuple(_converter.structure(i, ScriptedInput) for i in raw.get("inputs", ())),
        mocks={name: _structure_mock(m) for name, m in merged_mocks.items()},
        limits=_converter.structure(merged_limits, CaseLimits),
        expect=_structure_expect(expect),
        file=file,
        index=index,
    )


def _structure_mock(raw: Mapping[str, Any]) -> StageMock:
    return StageMock(
        outputs=raw.get("outputs", {}),
        delay=float(raw.get("delay", 0)),
        errors=tuple(_converter.structure(e, MockError) for e in raw.get("errors", ())),
    )


def _structure_expect(raw: Mapping[str, Any]) -> Expectations:
    def tuple_or_none(key: str) -> tuple[str, ...] | None:
        value = raw.get(key)
        return None if value is None else tuple(value)

    return Expectations(
        status=raw.get("status"),
        result=raw.get("result"),
        has_result="result" in raw,
        artifacts=raw.get("artifacts"),
        artifacts_subset=raw.get("artifacts_subset"),
        path=tuple_or_none("path"),
        path_in_order=tuple_or_none("path_in_order"),
        not_visited=tuple_or_none("not_visited"),
        events=tuple(_converter.structure(e, EventExpectation) for e in raw.get("events", ())),
        error=_converter.structure(raw["error"], ErrorExpectation) if "error" in raw else None,
        limit_exceeded=raw.get("limit_exceeded"),
    )
