"""One registry: a pipeline carries the registry it was loaded with, and sessions use it."""

from __future__ import annotations

import pytest
from fakes import doc, fake_registry, stage, terminal

import stageflow
from stageflow._stages import default_registry

pytestmark = pytest.mark.anyio

DOCUMENT = doc(
    [
        stage("set", "Set", config={"values": {"a": 1}}, outputs={"a": "a"}, next="end"),
        terminal("end", "a"),
    ]
)


def test_a_pipeline_carries_the_registry_it_was_loaded_with() -> None:
    registry = fake_registry()
    pipeline = stageflow.Pipeline.from_dict(DOCUMENT, registry=registry)
    assert pipeline.registry is registry


def test_a_pipeline_loaded_without_a_registry_carries_the_default_one() -> None:
    pipeline = stageflow.Pipeline.from_dict(doc([terminal("end")]))
    assert pipeline.registry is default_registry()


async def test_a_session_uses_the_pipelines_registry() -> None:
    pipeline = stageflow.Pipeline.from_dict(DOCUMENT, registry=fake_registry())
    result = await stageflow.Session(pipeline).run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert result.artifacts == {"a": 1}


async def test_a_restored_session_uses_the_registry_of_the_pipeline_it_is_given() -> None:
    pipeline = stageflow.Pipeline.from_dict(DOCUMENT, registry=fake_registry())
    snapshot = stageflow.Session(pipeline).to_dict()
    restored = stageflow.Session.from_dict(snapshot, pipeline=pipeline)
    assert (await restored.run()).artifacts == {"a": 1}


def test_a_registry_given_to_the_session_that_lacks_a_stage_says_so() -> None:
    pipeline = stageflow.Pipeline.from_dict(DOCUMENT, registry=fake_registry())
    with pytest.raises(stageflow.PipelineValidationError) as caught:
        stageflow.Session(pipeline, registry=stageflow.StageRegistry())
    message = str(caught.value)
    assert "the registry passed as Session(registry=...) does not have" in message
    assert "leave registry= out to use the one the pipeline was loaded with" in message


async def test_sessions_of_one_pipeline_use_the_registry_each_is_given() -> None:
    # Stages are looked up once per (pipeline, registry): a session given
    # another registry must get that registry's stages, not the ones found
    # for an earlier session of the same pipeline.
    pipeline = stageflow.Pipeline.from_dict(DOCUMENT, registry=fake_registry())
    assert (await stageflow.Session(pipeline).run()).artifacts == {"a": 1}
    other = stageflow.StageRegistry()

    @other.register("Set")
    async def set_two(ctx: stageflow.StageContext) -> dict[str, int]:
        return {"a": 2}

    assert (await stageflow.Session(pipeline, registry=other).run()).artifacts == {"a": 2}
    assert (await stageflow.Session(pipeline).run()).artifacts == {"a": 1}
    with pytest.raises(stageflow.PipelineValidationError):
        stageflow.Session(pipeline, registry=stageflow.StageRegistry())
