"""Which stages a command knows: ``--stages`` modules, the default registry, stage packs.

The registry a command uses is a fresh :class:`~stageflow.StageRegistry` holding

1. the core stages (``WaitStage``, ``SleepStage``, in every registry) and
   every stage of the default registry (``stageflow.register_stage``,
   :func:`stageflow.get_stages`), then
2. the stages of each ``--stages`` reference, in the order given (a module
   name, a ``.py`` file, either with ``:ATTRIBUTE``; read by the loader the
   tester shares, :mod:`stageflow._stage_modules`), then
3. the installed stage packs (``StageRegistry.load_plugins``), unless
   ``--no-plugins``; ``--plugin NAME`` loads only the named ones.

A module without a ``registry`` attribute is imported for its side effects
(registering into the default registry). One name registered by two different
sources is a :class:`~stageflow.StageConflictError`; the same stage reached
twice (a module's registry that holds a default-registry stage) is not.
Building a fresh registry keeps the process-wide default registry untouched.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from stageflow._cli._common import CommandError
from stageflow._errors import PipelineValidationError, Problem
from stageflow._guard import BudgetError, is_yaml_path, read_text_file
from stageflow._pipeline import Pipeline, parse_document
from stageflow._stage_modules import StagesModuleError, merge_registries, registry_of
from stageflow._stages import StageContext, StageRegistry, default_registry

__all__ = [
    "STAGES_HINT",
    "UNREGISTERED",
    "add_stage_options",
    "read_document",
    "read_pipeline",
    "resolve_registry",
    "structural_registry",
]


UNREGISTERED = "which is not registered"
"""How a problem about an unknown stage name reads (the pipeline loader's check)."""
STAGES_HINT = (
    "stage names are checked against the registered stages: pass --stages MODULE "
    "(a module name or a .py file that registers them)"
)
"""What to tell a user whose pipeline names stages the command does not know."""


def add_stage_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--stages``, ``--plugin`` and ``--no-plugins`` to a command's parser."""
    group = parser.add_argument_group("stages")
    group.add_argument(
        "--stages",
        dest="stages_modules",
        action="append",
        default=[],
        metavar="MODULE",
        help=(
            "a module name or .py file that registers stages (repeatable); its 'registry' "
            "attribute is used if it has one, else the default registry"
        ),
    )
    packs = group.add_mutually_exclusive_group()
    packs.add_argument(
        "--plugin",
        dest="plugins",
        action="append",
        default=[],
        metavar="NAME",
        help="load only this installed stage pack (repeatable; default: all of them)",
    )
    packs.add_argument("--no-plugins", action="store_true", help="load no installed stage packs")


def _module_registry(spec: str) -> StageRegistry:
    try:
        return registry_of(spec)
    except StagesModuleError as exc:
        raise CommandError(f"--stages {exc}", detail=exc.detail) from exc


def _load_plugins(registry: StageRegistry, names: Sequence[str], enabled: bool) -> None:
    if not enabled:
        return
    # Named packs were asked for explicitly: a missing or broken one is an error. Unnamed
    # ones that fail are left out; stageflow logs a warning for each.
    registry.load_plugins(list(names) if names else None, strict=bool(names))


def resolve_registry(
    modules: Sequence[str] = (),
    *,
    plugins: Sequence[str] = (),
    load_plugins: bool = True,
) -> StageRegistry:
    """Build the registry a command uses (see the module docstring for the rules).

    Args:
        modules: ``--stages`` values, module names or ``.py`` paths.
        plugins: ``--plugin`` names; empty loads every installed stage pack.
        load_plugins: ``False`` for ``--no-plugins``.

    Raises:
        CommandError: a module cannot be imported or has a bad ``registry``.
        StageConflictError: two sources register one name for different stages.
        PluginNotFoundError: a ``--plugin`` name is not installed.
        PluginLoadError: a ``--plugin`` pack cannot be loaded.
    """
    # Module registries are read after every import: a module without a registry
    # fills the default one when imported.
    found = [_module_registry(spec) for spec in modules]
    registry = merge_registries([default_registry(), *found])
    _load_plugins(registry, plugins, load_plugins)
    return registry


async def _not_loaded(ctx: StageContext) -> Mapping[str, Any] | None:
    raise RuntimeError(f"stage {ctx.stage!r} was not loaded; this registry only checks structure")


def structural_registry(document: object) -> StageRegistry:
    """A registry that knows every stage name ``document`` uses, with no spec.

    Loading a pipeline against it checks everything but the stages (names,
    arguments, outputs, config), for commands that do not run anything.
    """
    registry = StageRegistry()
    todo = [document]  # the document, then every (nested) subpipeline
    while todo:
        graph = todo.pop()
        if not isinstance(graph, Mapping):
            continue
        nodes = graph.get("nodes")
        for node in nodes if isinstance(nodes, list) else ():
            name = node.get("stage") if isinstance(node, Mapping) else None
            if isinstance(name, str) and name and name not in registry:
                registry.add(_not_loaded, name=name, source="(not loaded: structure only)")
        children = graph.get("subpipelines")
        if isinstance(children, Mapping):
            todo.extend(children.values())
    return registry


def read_document(path: str) -> Any:
    """Read and parse a pipeline file (JSON, or YAML by suffix).

    Raises:
        PipelineValidationError: the file cannot be read or parsed (one problem at ``$``).
    """
    file = Path(path)
    try:
        text = read_text_file(file)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise PipelineValidationError(
            [Problem("$", f"cannot read the file: {reason}; check the path")], source=path
        ) from exc
    except UnicodeDecodeError as exc:
        raise PipelineValidationError(
            [Problem("$", f"the file is not UTF-8 text ({exc.reason}); save it as UTF-8")],
            source=path,
        ) from exc
    except BudgetError as exc:
        raise PipelineValidationError([Problem("$", f"not read: {exc}")], source=path) from exc
    return parse_document(text, source=path, yaml_=is_yaml_path(file))


def read_pipeline(path: str, registry: StageRegistry | None) -> Pipeline:
    """Load and validate the pipeline at ``path``.

    Args:
        path: a ``.json``, ``.yaml`` or ``.yml`` file.
        registry: the stages to check against; ``None`` checks the structure only.

    Raises:
        PipelineValidationError: every problem, with its location.
    """
    document = read_document(path)
    if registry is None:
        registry = structural_registry(document)
    return Pipeline.from_dict(document, registry=registry, source=path)
