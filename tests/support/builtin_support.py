"""Running the built-in stages through a real pipeline, for the ``test_builtins*`` files.

A test names one stage with :func:`node` (id ``op``, then ``end``); :func:`run`
chains the nodes into a pipeline over the built-ins' registry and runs it.
:func:`context_after` wants the run completed, :func:`failure` wants it failed
with a ``BuiltinStageError`` raised at node ``op``, and :func:`problems` /
:func:`problem_at` want the document refused at load time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

import stageflow
import stageflow.builtins as builtins
from stageflow.builtins import BuiltinStageError

REGISTRY = builtins.registry()


def node(stage: str, **fields: Any) -> dict[str, Any]:
    """A stage node ``op`` running ``builtins.<stage>``, then ``end``."""
    return {"id": "op", "type": "stage", "stage": f"builtins.{stage}", **fields, "next": "end"}


def document(*nodes: Mapping[str, Any]) -> dict[str, Any]:
    """Chain ``nodes`` (ids op, op1, op2, ...) into a pipeline ending at a terminal."""
    ids = ["op", *(f"op{i}" for i in range(1, len(nodes))), "end"]
    chained = [{**n, "id": ids[i], "next": ids[i + 1]} for i, n in enumerate(nodes)]
    end = {"id": "end", "type": "terminal", "result": {"done": True}, "artifacts": []}
    return {"api_version": "1.0", "entry": "op", "nodes": [*chained, end]}


async def run(
    *nodes: Mapping[str, Any],
    payload: Mapping[str, Any] | None = None,
    registry: stageflow.StageRegistry = REGISTRY,
) -> tuple[stageflow.SessionResult, dict[str, Any]]:
    """Run the chained ``nodes``: the result and the payload after, as JSON."""
    pipeline = stageflow.Pipeline.from_dict(document(*nodes), registry=registry)
    session = stageflow.Session(pipeline, registry=registry, payload=payload or {})
    result = await session.run()
    return result, json.loads(json.dumps(dict(session.payload)))


async def context_after(*nodes: Mapping[str, Any], payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload after a run of ``nodes`` that must complete."""
    result, context = await run(*nodes, payload=payload)
    assert result.status is stageflow.SessionStatus.COMPLETED, result.error
    return context


async def failure(
    *nodes: Mapping[str, Any],
    payload: Mapping[str, Any] | None = None,
    registry: stageflow.StageRegistry = REGISTRY,
) -> BuiltinStageError:
    """The error of a run of ``nodes`` that must fail at node ``op``, first attempt."""
    result, _ = await run(*nodes, payload=payload, registry=registry)
    assert result.status is stageflow.SessionStatus.FAILED
    error = result.error
    assert isinstance(error, BuiltinStageError), repr(error)
    assert isinstance(error, stageflow.StageError)
    assert error.node_id == "op"
    assert error.attempt == 1
    assert str(error).startswith(f"stage {error.stage!r} at node 'op': ")
    return error


def problems(*nodes: Mapping[str, Any]) -> list[stageflow.Problem]:
    """The load-time problems of the chained ``nodes`` (there must be some)."""
    with pytest.raises(stageflow.PipelineValidationError) as info:
        stageflow.Pipeline.from_dict(document(*nodes), registry=REGISTRY)
    return list(info.value.problems)


def problem_at(location: str, *nodes: Mapping[str, Any]) -> str:
    """The message of the first problem at ``location``, which must name node ``op``."""
    found = problems(*nodes)
    matching = [p.message for p in found if p.location == location]
    assert matching, f"no problem at {location}: {found}"
    assert "'op'" in matching[0]
    return matching[0]
