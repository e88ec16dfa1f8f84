"""The pipeline JSON Schema for editors and tools, optionally narrowed to known stages."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from stageflow._errors import RegistryError
from stageflow._json import copy_json
from stageflow._pipeline import load_schema

__all__ = ["pipeline_schema"]


def pipeline_schema(stage_names: Iterable[str] | None = None) -> dict[str, Any]:
    """Return the pipeline document JSON Schema (draft 2020-12) as a new dict.

    With ``stage_names``, the ``stage`` field of stage nodes is restricted to
    those names (a sorted ``enum``), so an editor can complete them and a
    program writing pipelines (a person or a language model) knows the
    choices. The ``$id`` stays that of the format version: the narrowed
    schema accepts a subset of the same format.

    Args:
        stage_names: the stage names to allow, e.g. ``registry.names()`` or a
            :class:`~stageflow.StageRegistry` itself; ``None`` allows any name.

    Returns:
        A fresh copy; changing it does not affect stageflow.

    Raises:
        RegistryError: a stage name is not a non-empty string.

    Example::

        schema = stageflow.pipeline_schema(registry.names())
        Path("pipeline.schema.json").write_text(json.dumps(schema, indent=2))
    """
    schema: dict[str, Any] = copy_json(load_schema("pipeline"))
    if stage_names is None:
        return schema
    names: set[str] = set()
    for name in stage_names:
        if not isinstance(name, str) or not name:
            raise RegistryError(
                f"stage names must be non-empty strings, got {name!r}; "
                "pass registry.names() or a list of the names pipelines may use"
            )
        names.add(name)
    stage_field: dict[str, Any] = schema["$defs"]["stage_node"]["properties"]["stage"]
    stage_field["enum"] = sorted(names)
    listed = ", ".join(sorted(names)) if names else "none are registered"
    stage_field["description"] = (
        f"{stage_field.get('description', 'Name of a registered stage.')} "
        f"Registered stages: {listed}."
    )
    return schema
