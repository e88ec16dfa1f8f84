"""The error tree and the JSON description of errors."""

from __future__ import annotations

import json

import pytest

import stageflow
from stageflow._errors import describe_exception, error_matches


def test_a_suppressed_context_is_not_listed_as_a_cause() -> None:
    # registry.get raises `from None`: the KeyError behind it is an implementation detail.
    with pytest.raises(stageflow.StageNotFoundError) as info:
        stageflow.StageRegistry().get("missing")
    assert describe_exception(info.value)["causes"] == []


def test_causes_follow_the_chain() -> None:
    try:
        try:
            raise ValueError("inner")
        except ValueError as inner:
            raise stageflow.StageError("outer", node_id="n", stage="S", attempt=2) from inner
    except stageflow.StageError as exc:
        described = exc.to_dict()
    assert described == {
        "type": "StageError",
        "message": "outer",
        "node_id": "n",
        "attempt": 2,
        "stage": "S",
        "causes": [{"type": "ValueError", "message": "inner"}],
    }
    assert json.loads(json.dumps(described)) == described


def test_retry_on_and_error_edges_match_the_cause_chain_not_the_context() -> None:
    # docs/errors.md: only `raise ... from ...` links count; the description lists both.
    try:
        try:
            raise ConnectionError("down")
        except ConnectionError:
            raise ValueError("raised while handling it")  # noqa: B904
    except ValueError as exc:
        handled = stageflow.StageError("s", node_id="n", stage="S", attempt=1)
        handled.__cause__ = exc
    assert [c["type"] for c in describe_exception(handled)["causes"]] == [
        "ValueError",
        "ConnectionError",
    ]
    assert not error_matches(handled, ("ConnectionError",))
    assert error_matches(handled, ("ValueError",))
    chained = stageflow.StageError("s", node_id="n", stage="S", attempt=1)
    chained.__cause__ = ValueError("wrapped")
    chained.__cause__.__cause__ = ConnectionError("down")
    assert error_matches(chained, ("OSError",))


def test_parallel_run_error_works_with_except_star_and_except() -> None:
    group = stageflow.ParallelRunError(
        "two failed",
        [
            stageflow.ConditionError("c", node_id="a"),
            stageflow.StageOutputError("o", node_id="b"),
        ],
    )
    caught: list[BaseExceptionGroup] = []
    try:
        raise group
    except* stageflow.ConditionError as part:
        caught.append(part)
    except* stageflow.StageOutputError as rest:
        caught.append(rest)
    assert [type(c).__name__ for c in caught] == ["ParallelRunError", "ParallelRunError"]
    assert [[e.node_id for e in c.exceptions] for c in caught] == [["a"], ["b"]]  # type: ignore[attr-defined]
    with pytest.raises(stageflow.StageflowError):
        raise group
    assert [e["type"] for e in describe_exception(group)["errors"]] == [
        "ConditionError",
        "StageOutputError",
    ]


@pytest.mark.parametrize(
    ("error", "bases"),
    [
        (stageflow.PipelineValidationError, (stageflow.DefinitionError, ValueError)),
        (stageflow.JsonLogicError, (stageflow.DefinitionError,)),
        (stageflow.StageNotFoundError, (stageflow.RegistryError, KeyError)),
        (stageflow.StageConflictError, (stageflow.RegistryError,)),
        (stageflow.ContextPathError, (stageflow.ContextError, ValueError)),
        (stageflow.NonJsonValueError, (stageflow.ContextError, TypeError)),
        (stageflow.SessionStateError, (RuntimeError,)),
        (stageflow.StageError, (stageflow.NodeError,)),
        (stageflow.StageOutputError, (stageflow.NodeError,)),
        (stageflow.ConditionError, (stageflow.NodeError,)),
        (stageflow.MergeConflictError, (stageflow.NodeError,)),
        (stageflow.LimitExceededError, (stageflow.NodeError,)),
        (stageflow.ParallelRunError, (ExceptionGroup,)),
    ],
)
def test_the_error_tree(error: type, bases: tuple[type, ...]) -> None:
    assert issubclass(error, stageflow.StageflowError)
    for base in bases:
        assert issubclass(error, base)
