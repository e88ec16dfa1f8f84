"""Built-in stages: small, safe data operations every pipeline needs.

Each built-in is a :class:`~stageflow.BaseStage` subclass with a precise
:class:`~stageflow.StageSpec` (JSON Schemas for its arguments, config and
outputs, checked when a pipeline loads) and typed errors for bad input.
They are registered under names in the ``builtins.`` namespace, which user
stages should not use, so they never clash::

    registry = stageflow.builtins.registry()  # a new registry with all of them

    @registry.register("MyStage")              # plus your own
    async def my_stage(ctx): ...

or ``stageflow.builtins.register(existing_registry)``. The default registry
(``stageflow.register_stage``) does not include them.

Values and objects: ``builtins.set``, ``builtins.copy``, ``builtins.increment``,
``builtins.merge``, ``builtins.pick``, ``builtins.drop``.
Lists: ``builtins.append``, ``builtins.extend``, ``builtins.unique``,
``builtins.pop``, ``builtins.filter``; ``builtins.concat`` (strings or lists).
Text: ``builtins.template``. Checks: ``builtins.assert``, ``builtins.fail``,
``builtins.log``.

Conventions shared by all of them:

- Transforming stages output ``value`` (``builtins.pop`` also ``item``);
  the result never shares a container with the context.
- A required argument whose context path holds nothing, or an argument of
  the wrong JSON type, is a :class:`BuiltinArgumentError` naming the stage,
  node and argument. Every error is a :class:`BuiltinStageError`, which is a
  :class:`stageflow.StageError`.

The catalogue with every argument, config key and output is generated from
the specs into ``docs/builtins.md``.
"""

from stageflow.builtins._checks import LOG_LEVELS, AssertStage, FailStage, LogStage
from stageflow.builtins._common import MAX_TEXT
from stageflow.builtins._errors import (
    AssertionFailedError,
    BuiltinArgumentError,
    BuiltinConfigError,
    BuiltinStageError,
    InjectedFailureError,
    TemplateError,
)
from stageflow.builtins._lists import (
    AppendStage,
    ConcatStage,
    ExtendStage,
    FilterStage,
    PopStage,
    UniqueStage,
)
from stageflow.builtins._registry import PREFIX, SOURCE, STAGES, register, registry
from stageflow.builtins._template import TEMPLATE_PATTERN, TemplateStage
from stageflow.builtins._values import (
    CopyStage,
    DropStage,
    IncrementStage,
    MergeStage,
    PickStage,
    SetStage,
)

__all__ = [
    "LOG_LEVELS",
    "MAX_TEXT",
    "PREFIX",
    "SOURCE",
    "STAGES",
    "TEMPLATE_PATTERN",
    "AppendStage",
    "AssertStage",
    "AssertionFailedError",
    "BuiltinArgumentError",
    "BuiltinConfigError",
    "BuiltinStageError",
    "ConcatStage",
    "CopyStage",
    "DropStage",
    "ExtendStage",
    "FailStage",
    "FilterStage",
    "IncrementStage",
    "InjectedFailureError",
    "LogStage",
    "MergeStage",
    "PickStage",
    "PopStage",
    "SetStage",
    "TemplateError",
    "TemplateStage",
    "UniqueStage",
    "register",
    "registry",
]
