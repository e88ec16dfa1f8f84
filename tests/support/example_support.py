"""Importing an example's ``stages.py`` and ``run.py`` without leaking its modules.

Every example has a ``stages`` module that its ``run.py`` imports by that name,
so an example's ``stages`` is put in ``sys.modules`` only while its ``run.py``
is imported.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).parents[2] / "examples"


def load_module(name: str, path: Path) -> ModuleType:
    """Import the file ``path`` as a module called ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_example(folder: str) -> tuple[ModuleType, ModuleType]:
    """``(stages, run)`` of ``examples/<folder>``; ``run.registry`` is ``stages.registry``."""
    stages = load_module(f"{folder}_stages", EXAMPLES / folder / "stages.py")
    saved = sys.modules.get("stages")
    sys.modules["stages"] = stages
    try:
        run = load_module(f"{folder}_run", EXAMPLES / folder / "run.py")
    finally:
        if saved is None:
            del sys.modules["stages"]
        else:
            sys.modules["stages"] = saved
    assert run.registry is stages.registry
    return stages, run
