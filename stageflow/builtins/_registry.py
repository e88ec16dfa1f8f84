"""The catalogue of built-in stages and the functions that register them."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from stageflow._errors import StageConflictError
from stageflow._json import a_python_type
from stageflow._stages import BaseStage, StageRegistry
from stageflow.builtins._checks import AssertStage, FailStage, LogStage
from stageflow.builtins._lists import (
    AppendStage,
    ConcatStage,
    ExtendStage,
    FilterStage,
    PopStage,
    UniqueStage,
)
from stageflow.builtins._template import TemplateStage
from stageflow.builtins._values import (
    CopyStage,
    DropStage,
    IncrementStage,
    MergeStage,
    PickStage,
    SetStage,
)

__all__ = ["PREFIX", "SOURCE", "STAGES", "register", "registry"]

PREFIX: Final = "builtins."
"""Every built-in stage name starts with this, so none clashes with a user's stage."""

SOURCE: Final = "stageflow.builtins"
"""The ``source`` the built-in stages are registered with (shown in the catalogue)."""

STAGES: Final[Mapping[str, type[BaseStage]]] = MappingProxyType(
    {
        f"{PREFIX}{name}": cls
        for name, cls in sorted(
            {
                "append": AppendStage,
                "assert": AssertStage,
                "concat": ConcatStage,
                "copy": CopyStage,
                "drop": DropStage,
                "extend": ExtendStage,
                "fail": FailStage,
                "filter": FilterStage,
                "increment": IncrementStage,
                "log": LogStage,
                "merge": MergeStage,
                "pick": PickStage,
                "pop": PopStage,
                "set": SetStage,
                "template": TemplateStage,
                "unique": UniqueStage,
            }.items()
        )
    }
)
"""Stage name -> class, for every built-in stage, sorted by name."""


def register(registry: StageRegistry) -> None:
    """Add every built-in stage to ``registry`` under its ``builtins.*`` name.

    All or nothing: if any built-in name is already taken, nothing is added.

    Args:
        registry: the registry to add to.

    Raises:
        StageConflictError: ``registry`` already has a stage under one of the
            names (for example because ``register`` was called on it before).
        TypeError: ``registry`` is not a :class:`~stageflow.StageRegistry`.
    """
    if not isinstance(registry, StageRegistry):
        given = (
            "the class stageflow.StageRegistry, not an instance"
            if registry is StageRegistry
            else a_python_type(registry)
        )
        raise TypeError(
            f"stageflow.builtins.register() was given {given}; "
            "pass a stageflow.StageRegistry to add the built-in stages to, or call "
            "stageflow.builtins.registry() for a new one that holds them"
        )
    for name in STAGES:
        if name in registry:
            raise StageConflictError(name, registry.get(name).source, SOURCE)
    for name, cls in STAGES.items():
        registry.add(cls, name=name, source=SOURCE)


def registry() -> StageRegistry:
    """Return a new :class:`~stageflow.StageRegistry` holding only the built-in stages.

    Add your own stages to it with its ``register`` decorator.
    """
    fresh = StageRegistry()
    register(fresh)
    return fresh
