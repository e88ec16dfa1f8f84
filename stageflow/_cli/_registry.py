"""Which stages a command knows: ``--stages`` modules, the default registry, stage packs.

The registry a command uses is a fresh :class:`~stageflow.StageRegistry` holding

1. the core stages (``WaitStage``, ``SleepStage``, in every registry) and
   every stage of the default registry (``stageflow.register_stage``,
   :func:`stageflow.get_stages`), then
2. the stages of each ``--stages`` module that exposes a ``registry``
   attribute (a :class:`~stageflow.StageRegistry`, or a function returning
   one such as ``stageflow.builtins.registry``), in the order given, then
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
import hashlib
import importlib
import importlib.util
import os
import re
import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from stageflow._cli._common import CommandError
from stageflow._errors import PipelineValidationError, Problem
from stageflow._pipeline import Pipeline, parse_document
from stageflow._stages import StageContext, StageEntry, StageRegistry, default_registry

__all__ = [
    "STAGES_HINT",
    "UNREGISTERED",
    "add_stage_options",
    "import_stages_module",
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


def _looks_like_path(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or os.sep in spec or Path(spec).is_file()


@contextmanager
def _on_sys_path(directory: str) -> Iterator[None]:
    """Let a module import its neighbours while it is imported."""
    added = directory not in sys.path
    if added:
        sys.path.insert(0, directory)
    try:
        yield
    finally:
        if added and directory in sys.path:
            sys.path.remove(directory)


def _import_failure(spec: str, exc: BaseException) -> CommandError:
    detail = "".join(traceback.format_exception(exc)).rstrip()
    return CommandError(
        f"--stages {spec}: importing it raised {type(exc).__name__}: {exc}; "
        "fix the module (traceback below)",
        detail=detail,
    )


def _module_name_for(file: Path) -> str:
    """``stem`` when that name is free (or is this file already), else ``stem_<hash>``."""
    stem = re.sub(r"\W", "_", file.stem)
    if not stem.isidentifier():
        stem = f"_{stem}"
    existing = sys.modules.get(stem)
    if existing is None or _same_file(existing, file):
        return stem
    digest = hashlib.sha256(str(file).encode()).hexdigest()[:10]
    return f"{stem}_{digest}"


def _same_file(module: ModuleType, file: Path) -> bool:
    origin = getattr(module, "__file__", None)
    return origin is not None and Path(origin).resolve() == file


def import_stages_module(spec: str) -> ModuleType:
    """Import a ``--stages`` value: a module name, or a path to a ``.py`` file.

    A module name is looked up on ``sys.path`` plus the current directory. A
    file is imported under its stem as the module name (``stages.py`` ->
    ``stages``, so catalogue sources read ``stages.InitStage``) with its
    directory on ``sys.path`` while it runs; importing the same file again
    reuses the module.

    Raises:
        CommandError: the module or file does not exist, or importing it raised.
    """
    if _looks_like_path(spec):
        file = Path(spec).resolve()
        if not file.is_file():
            raise CommandError(
                f"--stages {spec}: no such file ({file}); pass a path to a .py file or a "
                "module name such as 'myapp.stages'"
            )
        name = _module_name_for(file)
        loaded = sys.modules.get(name)
        if loaded is not None and _same_file(loaded, file):
            return loaded
        module_spec = importlib.util.spec_from_file_location(name, file)
        if module_spec is None or module_spec.loader is None:
            raise CommandError(f"--stages {spec}: cannot import {file}; is it a Python file?")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            with _on_sys_path(str(file.parent)):
                module_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise _import_failure(spec, exc) from exc
        return module
    try:
        with _on_sys_path(os.getcwd()):
            return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (spec == exc.name or spec.startswith(exc.name + ".")):
            raise CommandError(
                f"--stages {spec}: no module named {exc.name!r} (searched the current directory "
                "and sys.path); pass an importable module name or a path to a .py file"
            ) from exc
        raise _import_failure(spec, exc) from exc
    except Exception as exc:
        raise _import_failure(spec, exc) from exc


def _module_registry(spec: str, module: ModuleType) -> StageRegistry | None:
    registry = getattr(module, "registry", None)
    if registry is None:
        return None
    if callable(registry) and not isinstance(registry, StageRegistry):
        registry = registry()  # a factory, such as stageflow.builtins.registry
    if not isinstance(registry, StageRegistry):
        raise CommandError(
            f"--stages {spec}: its 'registry' attribute is a {type(registry).__name__}, not a "
            "stageflow.StageRegistry (or a function returning one); rename it, or make it the "
            "registry its stages are in"
        )
    return registry


def _copy_into(target: StageRegistry, entries: Sequence[StageEntry]) -> None:
    for entry in entries:
        if entry.name in target and target.get(entry.name).target is entry.target:
            continue  # the same stage reached through two sources
        target.add(entry.target, name=entry.name, spec=entry.spec, source=entry.source)


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
    registry = StageRegistry()
    _copy_into(registry, default_registry().catalogue(core=False))
    for spec in modules:
        module_registry = _module_registry(spec, import_stages_module(spec))
        if module_registry is not None:
            _copy_into(registry, module_registry.catalogue(core=False))
        else:
            # The module registered into the default registry on import.
            _copy_into(registry, default_registry().catalogue(core=False))
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
        text = file.read_text(encoding="utf-8")
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
    return parse_document(text, source=path, yaml_=file.suffix in (".yaml", ".yml"))


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
