"""Stages module references: from ``myapp.stages`` or ``stages.py:REGISTRY`` to a registry.

The one loader behind the CLI's ``--stages`` and the tester's ``stages`` (case
files, ``stageflow test --stages``, the pytest plugin's ``stageflow_stages``).
A reference is

- a module name (``myapp.stages``), looked up on ``sys.path`` plus the
  current directory;
- a path to a ``.py`` file (``stages.py``, ``lib/stages.py``), imported under
  its stem as the module name (so catalogue sources read ``stages.InitStage``;
  the tester asks for names made from the path instead, see
  :func:`import_stages_module`) with its directory on ``sys.path`` while it
  runs; importing the same file again reuses the module;
- either of them followed by ``:ATTRIBUTE`` (``myapp.stages:REGISTRY``).

The module's stages are those of the named attribute, else of its
``registry`` attribute: a :class:`~stageflow.StageRegistry`, or a function
returning one (such as ``stageflow.builtins.registry``). A module without a
``registry`` attribute is taken to register into the default registry when
it is imported.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import re
import sys
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from stageflow._json import a_python_type
from stageflow._stages import StageRegistry, default_registry

__all__ = [
    "StagesModuleError",
    "import_stages_module",
    "is_file_ref",
    "merge_registries",
    "registry_of",
    "split_stages_ref",
]


class StagesModuleError(Exception):
    """A stages module reference that cannot be turned into a registry.

    Raised to the CLI and the tester only, which word it for their user
    (``--stages REF: ...`` or a problem at ``$.stages``).

    Attributes:
        ref: the reference as given.
        reason: what went wrong and how to fix it.
        detail: the traceback of an import that raised, or ``""``.
    """

    def __init__(self, ref: str, reason: str, detail: str = "") -> None:
        super().__init__(f"{ref}: {reason}")
        self.ref = ref
        self.reason = reason
        self.detail = detail


def split_stages_ref(ref: str) -> tuple[str, str]:
    """Split ``module:attr`` (or ``file.py:attr``) into its module and attribute (or ``""``)."""
    head, sep, tail = ref.rpartition(":")
    if sep and head and tail.isidentifier():
        return head, tail
    return ref, ""


def is_file_ref(module: str) -> bool:
    """Whether a stages module reference (without ``:attr``) is a path to a ``.py`` file."""
    return module.endswith(".py") or "/" in module or "\\" in module or os.sep in module


@contextmanager
def _on_sys_path(directory: str) -> Iterator[None]:
    """Put ``directory`` first on ``sys.path`` while a module is imported.

    First even when it is on ``sys.path`` already further down: the module
    next to the reference (or in the current directory) wins over another of
    the same name elsewhere on the path.
    """
    sys.path.insert(0, directory)
    try:
        yield
    finally:
        if sys.path and sys.path[0] == directory:
            del sys.path[0]
        elif directory in sys.path:
            sys.path.remove(directory)


# Module names this loader gave to files it imported by path (name -> file). A
# module name given later resolves on sys.path as usual: such a file gives way.
_FROM_FILES: dict[str, Path] = {}


_IMPORTLIB_DIR = os.path.dirname(importlib.__file__)


def _import_machinery(filename: str) -> bool:
    """Whether a frame is this loader's or importlib's, not the imported module's."""
    return (
        filename == __file__
        or filename.startswith("<frozen importlib")
        or os.path.dirname(filename) == _IMPORTLIB_DIR
    )


def _user_traceback(exc: BaseException) -> str:
    """The traceback of an import that raised, from the first frame of the user's code.

    The frames of this loader and of importlib above it say nothing about the
    module that failed; a SyntaxError has no frame of its own left, and shows
    its file, line and caret.
    """
    report = traceback.TracebackException.from_exception(exc)
    frames = list(report.stack)
    while frames and _import_machinery(frames[0].filename):
        del frames[0]
    report.stack = traceback.StackSummary.from_list(frames)
    return "".join(report.format()).rstrip()


def _import_failure(ref: str, exc: BaseException, doing: str = "importing it") -> StagesModuleError:
    detail = _user_traceback(exc)
    return StagesModuleError(
        ref,
        f"{doing} raised {type(exc).__name__}: {exc}; fix the module (traceback below)",
        detail,
    )


def _same_file(module: ModuleType, file: Path) -> bool:
    origin = getattr(module, "__file__", None)
    return origin is not None and Path(origin).resolve() == file


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


def _unique_name(file: Path) -> str:
    stem = re.sub(r"\W", "_", file.stem)
    digest = hashlib.sha256(str(file).encode()).hexdigest()[:12]
    return f"stageflow_stages_{stem}_{digest}"


def _import_file(ref: str, file: Path, *, unique_name: bool) -> ModuleType:
    if file.is_dir():
        raise StagesModuleError(
            ref,
            f"{file} is a directory, not a .py file; pass a .py file in it, or the package's "
            f"module name ('{file.name}') from the directory above it",
        )
    if not file.is_file():
        raise StagesModuleError(
            ref,
            f"no such file ({file}); pass a path to a .py file or a module name such as "
            "'myapp.stages'",
        )
    name = _unique_name(file) if unique_name else _module_name_for(file)
    loaded = sys.modules.get(name)
    if loaded is not None and _same_file(loaded, file):
        return loaded
    module_spec = importlib.util.spec_from_file_location(name, file)
    if module_spec is None or module_spec.loader is None:
        raise StagesModuleError(ref, f"cannot import {file}; is it a Python file?")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        with _on_sys_path(str(file.parent)):
            module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # a module that exits is one that failed
        del sys.modules[name]
        raise _import_failure(ref, exc) from exc
    _FROM_FILES[name] = file
    return module


def _give_way(name: str) -> None:
    """Forget a file imported under ``name`` if ``name`` resolves to another module."""
    file = _FROM_FILES.get(name)
    if file is None:
        return
    found = importlib.machinery.PathFinder.find_spec(name)
    origin = found.origin if found is not None else None
    if origin is None or Path(origin).resolve() != file:
        del _FROM_FILES[name]
        sys.modules.pop(name, None)


def import_stages_module(ref: str, *, unique_name: bool = False) -> ModuleType:
    """Import the module of a reference (a module name or a ``.py`` path; no ``:attr``).

    Args:
        ref: the reference, without ``:attr``.
        unique_name: import a file under a name made from its path
            (``stageflow_stages_stages_<hash>``) rather than its stem. The
            tester asks for it: one pytest process loads the stage files of
            many case files, and every example directory has a ``stages.py``.
            The CLI runs one command per process and keeps the stem, so
            catalogue sources read ``stages.InitStage``.

    Raises:
        StagesModuleError: the module or file does not exist, or importing it raised.
    """
    if "\0" in ref:  # no path or module name holds one; os functions raise ValueError
        raise StagesModuleError(
            ref, "it contains a NUL character; pass a module name or a path to a .py file"
        )
    # A directory that no module name can be ("." or "..") is said as a path.
    path_only = ref in (".", "..")
    if is_file_ref(ref) or Path(ref).is_file() or path_only:
        return _import_file(ref, Path(ref).resolve(), unique_name=unique_name)
    if not ref or ref.startswith("."):
        # importlib reads ".stages" as a relative import and raised TypeError.
        raise StagesModuleError(
            ref,
            "it is no module name; pass a path to a .py file (such as ./stages.py) or an "
            "importable module name (such as myapp.stages)",
        )
    try:
        with _on_sys_path(os.getcwd()):
            _give_way(ref)
            return importlib.import_module(ref)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (ref == exc.name or ref.startswith(exc.name + ".")):
            raise StagesModuleError(
                ref,
                f"no module named {exc.name!r} (searched the current directory and sys.path); "
                "pass an importable module name or a path to a .py file",
            ) from exc
        raise _import_failure(ref, exc) from exc
    except (Exception, SystemExit) as exc:  # a module that exits is one that failed
        raise _import_failure(ref, exc) from exc


def registry_of(ref: str, *, unique_name: bool = False) -> StageRegistry:
    """The registry a stages module reference stands for (see the module docstring).

    ``unique_name`` is as for :func:`import_stages_module`.

    Raises:
        StagesModuleError: the module cannot be imported, or its attribute is
            not a registry (nor a function returning one).
    """
    if ref.endswith(":") and len(ref) > 1:
        raise StagesModuleError(
            ref, "nothing follows the colon; name the registry after it, or drop the colon"
        )
    module_ref, attr = split_stages_ref(ref)
    module = import_stages_module(module_ref, unique_name=unique_name)
    name = attr or "registry"
    if not hasattr(module, name):
        if not attr:
            _check_registered_by_default(ref, module_ref, module)
            return default_registry()  # the module registered into it on import
        raise StagesModuleError(
            ref,
            f"module {module.__name__!r} has no attribute {attr!r}; name the module's "
            "StageRegistry after the colon",
        )
    found = getattr(module, name)
    if inspect.iscoroutinefunction(found):
        raise StagesModuleError(
            ref,
            f"its {name!r} attribute is an async function (a stage?), not a "
            "stageflow.StageRegistry or a function returning one; name the module's registry"
            + (" after the colon" if attr else ""),
        )
    if callable(found) and not isinstance(found, StageRegistry):
        try:
            found = found()  # a factory, such as stageflow.builtins.registry
        except (Exception, SystemExit) as exc:
            raise _import_failure(
                ref, exc, f"calling its {name!r} attribute (a function that takes no arguments)"
            ) from exc
    if not isinstance(found, StageRegistry):
        raise StagesModuleError(
            ref,
            f"its {name!r} attribute is {a_python_type(found)}, not a stageflow.StageRegistry "
            "(or a function returning one); name the module's registry"
            + (" after the colon" if attr else ", or make it the registry its stages are in"),
        )
    return found


def _check_registered_by_default(ref: str, module_ref: str, module: ModuleType) -> None:
    """Refuse a module whose stages are in a registry not named ``registry``.

    Such a module (``REGISTRY = StageRegistry()``) was read as one that
    registers into the default registry, and its stages were then said to be
    not registered, though its reference was given.

    Raises:
        StagesModuleError: the module registered no stage into the default
            registry, and holds a StageRegistry of its own under another name
            or has a ``register`` function (a stage pack's module).
    """
    default = default_registry()
    held = [k for k, v in vars(module).items() if isinstance(v, StageRegistry) and v is not default]
    # A stage pack's module registers only into the registry its register(registry)
    # is given: as a stages module it added nothing, and said nothing.
    pack = callable(getattr(module, "register", None))
    if not held and not pack:
        return
    for entry in default.catalogue(core=False):
        if getattr(entry.target, "__module__", None) == module.__name__:
            return  # it registers into the default registry too
    if not held:
        raise StagesModuleError(
            ref,
            "it has no 'registry' attribute and registered no stage into the default "
            "registry, while it has a register function: is it a stage pack's module? A "
            "pack's stages are loaded by its entry point (StageRegistry.load_plugins; on the "
            "command line, installed packs load unless --no-plugins), not as a stages module; "
            "or give the module a 'registry'",
        )
    names = ", ".join(repr(k) for k in held)
    raise StagesModuleError(
        ref,
        f"it has no 'registry' attribute and registered no stage into the default registry, "
        f"while it holds a StageRegistry named {names}; pass {module_ref}:{held[0]}, or name "
        "it 'registry'",
    )


def merge_registries(registries: Iterable[StageRegistry]) -> StageRegistry:
    """A new registry with the stages of ``registries`` (core stages are in every registry).

    The same stage reached twice (one registry's stage also in another) is
    kept once.

    Raises:
        StageConflictError: two registries have one name for different stages.
    """
    merged = StageRegistry()
    for registry in registries:
        for entry in registry.catalogue(core=False):
            if entry.name in merged and merged.get(entry.name).target is entry.target:
                continue
            merged.add(entry.target, name=entry.name, spec=entry.spec, source=entry.source)
    return merged
