"""Fake stage packs for tests/test_plugins.py, reached through fake entry points.

As a module, this is itself a pack in module form: it has ``register``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import stageflow


async def upper(ctx: stageflow.StageContext) -> Mapping[str, Any]:
    return {"text": str(ctx.arguments["text"]).upper()}


async def lower(ctx: stageflow.StageContext) -> Mapping[str, Any]:
    return {"text": str(ctx.arguments["text"]).lower()}


class EchoImpostor(stageflow.BaseStage):
    async def run(self, ctx: stageflow.StageContext) -> Mapping[str, Any]:
        return {"reply": "not the real EchoLLM"}


def register(registry: stageflow.StageRegistry) -> None:
    """The module-form pack: registers Upper and Lower."""
    registry.add(upper, name="Upper")
    registry.add(lower, name="Lower")


def register_shout(registry: stageflow.StageRegistry) -> None:
    registry.add(upper, name="Shout")


def register_echo_copy(registry: stageflow.StageRegistry) -> None:
    """Clashes with the example pack's EchoLLM."""
    registry.add(EchoImpostor, name="EchoLLM")


def register_fresh_and_upper(registry: stageflow.StageRegistry) -> None:
    """Fresh is new, Upper clashes with the module-form pack: neither may stay."""
    registry.add(lower, name="Fresh")
    registry.add(upper, name="Upper")


def register_then_fail(registry: stageflow.StageRegistry) -> None:
    registry.add(upper, name="HalfDone")
    raise RuntimeError("provider settings are missing")


def register_raising_escapes(registry: stageflow.StageRegistry) -> None:
    """Fails with a message holding a line break and an escape sequence."""
    raise RuntimeError("provider settings\n\x1b[2Jare missing")


def register_with_own_source(registry: stageflow.StageRegistry) -> None:
    registry.add(upper, name="Labelled", source="somewhere else")


async def register_async(registry: stageflow.StageRegistry) -> None:
    registry.add(upper, name="Never")


def register_returning(registry: stageflow.StageRegistry) -> list[str]:
    registry.add(upper, name="Returned")
    return ["Returned"]


def register_nothing(registry: stageflow.StageRegistry) -> None:
    """A pack with no stages (for example, all of them need an optional extra)."""


NOT_CALLABLE = 42


def register_returning_coroutine(registry: stageflow.StageRegistry) -> object:
    """A plain function that forgot to await: returns a coroutine."""
    return register_async(registry)


def register_upper_and_lower(registry: stageflow.StageRegistry) -> None:
    registry.add(lower, name="Lower")
    registry.add(upper, name="Upper")


def register_exits(registry: stageflow.StageRegistry) -> None:
    """Ends the process instead of registering (as a script's main() would)."""
    registry.add(upper, name="Exited")
    raise SystemExit(3)


def register_without_the_registry() -> None:
    """A register function that forgot its parameter."""


def register_with_more(registry: stageflow.StageRegistry, settings: dict[str, Any]) -> None:
    """A register function that wants more than the registry."""
    registry.add(upper, name="Configured")


def register_builtin_names(registry: stageflow.StageRegistry) -> None:
    """Takes names in the namespace kept for stageflow.builtins."""
    registry.add(upper, name="Fine")
    registry.add(upper, name="builtins.set")
    registry.add(lower, name="builtins.shout")


class Unprintable:
    """An object whose repr() and str() raise (a proxy, a half-built object)."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    __str__ = __repr__


class UnprintableError(Exception):
    """An exception whose message cannot be formatted."""

    def __str__(self) -> str:
        raise RuntimeError("no str")


def register_raising_unprintable(registry: stageflow.StageRegistry) -> None:
    """Fails with an exception that cannot be shown."""
    raise UnprintableError


def register_exiting_unprintable(registry: stageflow.StageRegistry) -> None:
    """Exits with a code that cannot be shown."""
    raise SystemExit(Unprintable())


UNPRINTABLE = Unprintable()


def register_with_unprintable_default(
    registry: stageflow.StageRegistry, settings: Any, more: Any = UNPRINTABLE
) -> None:
    """Wants more than the registry, and its signature cannot be shown."""


def register_unprintable_stage(registry: stageflow.StageRegistry) -> None:
    """Registers an object that is no stage and cannot be shown."""
    registry.add(Unprintable(), name="Unprintable")  # type: ignore[arg-type]
