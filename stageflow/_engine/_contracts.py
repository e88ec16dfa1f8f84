"""Run-time contract checks: a stage's arguments and outputs against its declared schemas.

The pipeline loader checks names (a node maps only arguments and outputs its
stage declares); these checks look at the values, as the stage runs. They
follow the session's ``validate_events`` mode, as inputs and stage events do:
``off`` checks nothing, ``warn`` records a ``contract_violation`` event and
goes on, ``strict`` fails the attempt with a :class:`~stageflow.StageSchemaError`
that names the node, the key, what was expected and what was got. Arguments
are checked before the stage runs; outputs after it returns and before
anything is written, so a rejected attempt writes nothing. The engine checks
every stage this way, the test kit's mocks included (they keep the real
stage's spec).

A stage without a declared ``arguments`` / ``outputs`` schema costs one
``is None`` test per attempt ("sequential stage node" benchmark row).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from stageflow._errors import StageSchemaError
from stageflow._events import History
from stageflow._model import StageNode, ValidateEvents
from stageflow._specs import DocumentSchema, json_text

__all__ = ["check_contract"]

_CACHE_SIZE: Final = 1024
_SHOWN: Final = 80  # characters of a value or a schema keyword's value in a message

# id(schema) -> (schema, validator): a schema object is compiled once, and kept
# so that an id reused after garbage collection is never taken for it. The
# validator answers a valid value with the compiled (fast) check alone.
_validators: dict[int, tuple[Mapping[str, Any], DocumentSchema]] = {}


def _validator(schema: Mapping[str, Any]) -> DocumentSchema:
    cached = _validators.get(id(schema))
    if cached is not None and cached[0] is schema:
        return cached[1]
    validator = DocumentSchema(schema)
    if len(_validators) >= _CACHE_SIZE:
        _validators.clear()
    _validators[id(schema)] = (schema, validator)
    return validator


def _violations(schema: Mapping[str, Any], values: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(key, expected, got)`` for every way ``values`` breaks ``schema``."""
    found: list[tuple[str, str, str]] = []
    for error in _validator(schema).iter_errors(dict(values)):
        path = list(error.absolute_path)
        if error.validator == "required" and not path:
            names: Any = error.validator_value
            for name in names:
                if name not in values:
                    found.append((str(name), "a value (it is required)", "nothing"))
            continue
        key = str(path[0]) if path else "(all)"
        where = "".join(f"[{p!r}]" for p in path[1:])
        expected = f"{error.validator} {json_text(error.validator_value, _SHOWN)}"
        found.append((key + where, expected, json_text(error.instance, _SHOWN)))
    return found


def check_contract(
    mode: ValidateEvents,
    history: History,
    kind: str,
    node: StageNode,
    path: str,
    schema: Mapping[str, Any] | None,
    values: object,
) -> None:
    """Check ``values`` (the arguments, or the outputs) of ``node`` against ``schema``.

    ``mode`` is the session's ``validate_events``; a violation in ``warn`` mode
    is recorded in ``history``.

    Raises:
        StageSchemaError: in ``strict`` mode, a value does not match.
    """
    if schema is None or mode is ValidateEvents.OFF or not isinstance(values, Mapping):
        return
    violations = _violations(schema, values)
    if not violations:
        return
    if mode is ValidateEvents.STRICT:
        key, expected, got = violations[0]
        raise StageSchemaError(
            kind=kind,
            node_id=node.id,
            stage=node.stage,
            key=key,
            expected=expected,
            got=got,
            more=len(violations) - 1,
        )
    history.record(
        "contract_violation",
        node.id,
        path,
        {
            "kind": kind,
            "violations": [
                {"key": key, "expected": expected, "got": got} for key, expected, got in violations
            ],
        },
    )
