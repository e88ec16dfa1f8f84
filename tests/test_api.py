"""The public API, the import layers and the declared dependencies.

Layering rule (STYLE 2, seed defect 4), decided here because the design is
silent on type-only imports:

- Every import of one ``stageflow`` module by another, wherever it is written
  (module level, inside a function, or under ``if TYPE_CHECKING:``), must
  point to the same layer or a lower one. A type-only upward import still
  makes a lower layer's API depend on a higher one; declare a ``Protocol`` in
  the lower layer instead (as ``_stages.StageRuntime`` does for the engine).
- Cycles are checked on every import, type-only ones included: a circle
  that only type checking sees is still two modules that cannot be read,
  changed or tested one without the other.
- No module imports another module's underscore name, or reads or writes
  an underscore attribute that no class of its own defines (``obj._x``):
  what crosses modules is public, or package-internal without underscore.
- The package root (``stageflow/__init__.py``) may import anything; other
  modules may import the root only from the top layer, where it is the public
  API they build on.
- A module that is not in :data:`LAYERS` fails the test, so every new module
  gets a layer on purpose.
"""

from __future__ import annotations

import ast
import functools
import graphlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import itertools
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import stageflow

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "stageflow"

EXPORTED = [
    "API_VERSIONS",
    "BaseStage",
    "ConditionBranch",
    "ConditionError",
    "ConditionNode",
    "ContextError",
    "ContextPathError",
    "DefinitionError",
    "ErrorHandler",
    "Event",
    "EventCallback",
    "EventSpec",
    "EventStream",
    "FailedPack",
    "InputReceipt",
    "InputRejectedError",
    "InputSpec",
    "InputTimeoutError",
    "JsonLogicError",
    "LimitExceededError",
    "Limits",
    "LoadedPack",
    "LoggingSetupError",
    "MISSING",
    "MapError",
    "MapNode",
    "MergeConflictError",
    "MergeStrategy",
    "Node",
    "NodeError",
    "NodeTimeoutError",
    "NonJsonValueError",
    "ParallelNode",
    "ParallelPolicy",
    "ParallelRunError",
    "Pipeline",
    "PipelineValidationError",
    "PluginLoadError",
    "PluginNotFoundError",
    "PluginReport",
    "Problem",
    "ProblemsError",
    "Reducer",
    "RegistryError",
    "RestoredError",
    "RetryPolicy",
    "RunSuspended",
    "STAGE_PACK_GROUP",
    "Session",
    "SessionResult",
    "SessionService",
    "SessionStateError",
    "SessionStatus",
    "SessionTimeoutError",
    "SleepStage",
    "SnapshotError",
    "SnapshotMismatchError",
    "SnapshotVersionError",
    "StageConflictError",
    "StageContext",
    "StageContractError",
    "StageEntry",
    "StageError",
    "StageFunction",
    "StageNode",
    "StageNotFoundError",
    "StageOutputError",
    "StagePack",
    "StageRegistry",
    "StageSchemaError",
    "StageSpec",
    "StageflowError",
    "SubpipelineError",
    "SubpipelineNode",
    "TerminalNode",
    "TracingSetupError",
    "ValidateEvents",
    "WaitStage",
    "Worker",
    "get_stages",
    "jsonlogic",
    "pipeline_schema",
    "list_stage_packs",
    "register_stage",
]

# Layers from the bottom up. A module may import its own layer and the ones below.
LAYERS: dict[str, tuple[str, ...]] = {
    "bottom": (
        "_guard",
        "_deadlines",
        "_errors",
        "_json",
        "_identity",
        "jsonlogic",
        "_jsonlogic_compiled",
        "_templates",
        "_context",
        "_log",
        "_version",
    ),
    "model": ("_model", "_specs", "_plugins", "_stages", "_core_stages"),
    "loading": (
        "_pipeline",
        "_graph",
        "_merge",
        "_events",
        "_result",
        "_stage_modules",
        "_segments",
        "_telemetry",
        "_metrics",
        "_schema_export",
    ),
    # The engine kernel (a package, layered inside by its own docstring's
    # order), then the public session handle built on it.
    "kernel": ("_engine",),
    "engine": ("_session",),
    # Sessions at scale (store, service, worker): built on the public session handle.
    "store": ("store",),
    "top": ("cli", "_cli", "__main__", "testing", "tracing", "logging", "builtins", "ui"),
}

# Known violations, each with what would remove it. A ratchet: the layer test
# ignores exactly these, and test_known_layer_violations_are_still_there fails
# once one is fixed, so the entry gets deleted instead of hiding a new one.
KNOWN_VIOLATIONS: dict[str, str] = {}


# ----------------------------------------------------------------- public API


def test_all_is_sorted_and_has_no_duplicates() -> None:
    # Plain code-point order (uppercase first), as the package keeps it; ruff's RUF022
    # "isort-style" order differs and is switched off in pyproject.toml.
    assert stageflow.__all__ == sorted(stageflow.__all__)
    assert len(set(stageflow.__all__)) == len(stageflow.__all__)


def test_exports_match_the_list_in_this_test() -> None:
    # Adding or removing a public name is a decision: update EXPORTED with it.
    assert sorted(stageflow.__all__) == sorted(EXPORTED)


def test_every_exported_name_exists() -> None:
    missing = [name for name in stageflow.__all__ if not hasattr(stageflow, name)]
    assert missing == []


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, Any] = {}
    exec("from stageflow import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(EXPORTED)


def test_no_public_name_is_left_out_of_all() -> None:
    public = {
        name
        for name, value in vars(stageflow).items()
        if not name.startswith("_") and not (inspect.ismodule(value) and name not in EXPORTED)
    }
    assert public - set(stageflow.__all__) == set()


def _defining_modules() -> dict[str, str]:
    """Map each name ``stageflow/__init__.py`` imports to the module it comes from."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    out: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                out[alias.asname or alias.name] = node.module
    return out


def _has_attribute_docstring(module: str, name: str) -> bool:
    """True when ``name = ...`` at the top of ``module`` is followed by a string literal."""
    spec = importlib.util.find_spec(module)
    assert spec is not None
    assert spec.origin is not None
    body = ast.parse(Path(spec.origin).read_text()).body
    for node, following in itertools.pairwise(body):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return (
                isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
                and bool(following.value.value.strip())
            )
    return False


def _documented(value: object) -> bool:
    # Own __doc__ only: inspect.getdoc() would accept a docstring inherited from a base.
    doc = value.__doc__ if inspect.isclass(value) else getattr(value, "__doc__", None)
    return isinstance(doc, str) and bool(doc.strip())


def _public_members(cls: type) -> Iterator[tuple[str, object]]:
    """Methods, properties and class/static methods defined in ``cls`` itself."""
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, staticmethod | classmethod):
            yield name, value.__func__
        elif isinstance(value, property):
            yield name, value.fget
        elif inspect.isfunction(value):
            yield name, value


def _undocumented(namespace: Any, names: list[str], sources: dict[str, str]) -> list[str]:
    missing: list[str] = []
    for name in names:
        value = getattr(namespace, name)
        if inspect.ismodule(value):
            if not _documented(value):
                missing.append(name)
            missing.extend(
                f"{name}.{sub}"
                for sub in _undocumented(
                    value, list(value.__all__), {n: value.__name__ for n in value.__all__}
                )
            )
        elif inspect.isclass(value) or inspect.isfunction(value):
            if not _documented(value):
                missing.append(name)
            if inspect.isclass(value):
                missing.extend(
                    f"{name}.{member}"
                    for member, func in _public_members(value)
                    if not _documented(func)
                )
        elif not _has_attribute_docstring(sources[name], name):
            # Constants and type aliases: a string literal right after the assignment.
            missing.append(name)
    return missing


def test_every_public_name_and_method_has_a_docstring() -> None:
    assert _undocumented(stageflow, list(stageflow.__all__), _defining_modules()) == []


def test_the_docstring_check_can_fail() -> None:
    class Quiet:
        def method(self) -> None:
            pass

    namespace = type("NS", (), {"Quiet": Quiet})
    assert _undocumented(namespace, ["Quiet"], {}) == ["Quiet", "Quiet.method"]


# ------------------------------------------------------------------ layering


class Import(NamedTuple):
    importer: str
    target: str
    line: int
    type_only: bool
    names: tuple[str, ...] = ()  # the names a `from ... import` takes (not modules)


def _module_name(path: Path, package_dir: Path, package: str) -> str:
    parts = list(path.relative_to(package_dir).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _raw_imports(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement with whether it sits under ``if TYPE_CHECKING:``."""

    def walk(node: ast.AST, type_only: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child, type_only
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), True)
                for stmt in child.orelse:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), type_only)
            else:
                yield from walk(child, type_only)

    yield from walk(tree, False)


def package_imports(package_dir: Path, package: str) -> tuple[set[str], list[Import]]:
    """The modules of a package and the imports between them."""
    files = sorted(package_dir.rglob("*.py"))
    modules = {_module_name(f, package_dir, package) for f in files}
    found: list[Import] = []
    for file in files:
        name = _module_name(file, package_dir, package)
        is_package = file.name == "__init__.py"
        for stmt, type_only in _raw_imports(ast.parse(file.read_text())):
            # (target module, the name taken from it if it is not a module itself)
            pairs: list[tuple[str, tuple[str, ...]]]
            if isinstance(stmt, ast.Import):
                pairs = [(alias.name, ()) for alias in stmt.names]
            else:
                base = stmt.module or ""
                if stmt.level:
                    anchor = name.split(".")
                    anchor = anchor if is_package else anchor[:-1]
                    anchor = anchor[: len(anchor) - (stmt.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                pairs = [
                    (f"{base}.{alias.name}", ())
                    if f"{base}.{alias.name}" in modules
                    else (base, (alias.name,))
                    for alias in stmt.names
                ]
            for target, names in pairs:
                # `import stageflow._x.y` imports stageflow._x.y; keep the longest known module.
                while target not in modules and "." in target:
                    target = target.rpartition(".")[0]
                if target in modules and target != name:
                    found.append(Import(name, target, stmt.lineno, type_only, names))
    return modules, found


def layer_problems(
    modules: set[str], imports: list[Import], layers: dict[str, tuple[str, ...]], package: str
) -> list[str]:
    rank: dict[str, int] = {}
    for level, (_, members) in enumerate(layers.items()):
        for member in members:
            rank[member] = level
    top = len(layers) - 1

    def level_of(module: str) -> int | None:
        if module == package:
            return None
        return rank.get(module.split(".")[1])

    problems = [
        f"{module} is in no layer; add {module.split('.')[1]!r} to LAYERS in {Path(__file__).name}"
        for module in sorted(modules)
        if module != package and level_of(module) is None
    ]
    for imp in imports:
        if imp.importer == package:
            continue
        private = [n for n in imp.names if n.startswith("_") and not n.startswith("__")]
        if private:
            problems.append(
                f"{imp.importer} (line {imp.line}) imports {', '.join(private)} from "
                f"{imp.target}: underscore names stay in their module; make it public there "
                "(package-internal modules are private already)"
            )
        source = level_of(imp.importer)
        if source is None:
            continue
        if imp.target == package:
            if source != top:
                problems.append(
                    f"{imp.importer} (line {imp.line}) imports the package root {package!r}; "
                    "import the private module that defines the name instead"
                )
            continue
        target = level_of(imp.target)
        if target is not None and target > source:
            kind = "type-only import" if imp.type_only else "import"
            problems.append(
                f"{imp.importer} (line {imp.line}): upward {kind} of {imp.target} "
                f"(layer {list(layers)[target]!r} is above {list(layers)[source]!r})"
            )
    graph: dict[str, set[str]] = {module: set() for module in sorted(modules)}
    for imp in imports:
        graph[imp.importer].add(imp.target)
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        # graphlib lists each node before the one that imports it; show "imports" arrows,
        # starting at the smallest name so the message is stable.
        cycle = exc.args[1][:0:-1]
        start = cycle.index(min(cycle))
        cycle = cycle[start:] + cycle[:start]
        problems.append(f"import cycle: {' -> '.join([*cycle, cycle[0]])}")
    return problems


def _without_line(problem: str) -> str:
    return re.sub(r" \(line \d+\)", "", problem).split(" (layer ")[0]


def _stageflow_layer_problems() -> list[str]:
    modules, imports = package_imports(PACKAGE, "stageflow")
    assert "stageflow._session" in modules
    assert any(i.importer == "stageflow._session" for i in imports)
    return layer_problems(modules, imports, LAYERS, "stageflow")


def test_imports_respect_the_layers_and_have_no_cycles() -> None:
    problems = [p for p in _stageflow_layer_problems() if _without_line(p) not in KNOWN_VIOLATIONS]
    assert problems == []


def test_known_layer_violations_are_still_there() -> None:
    found = {_without_line(p) for p in _stageflow_layer_problems()}
    assert set(KNOWN_VIOLATIONS) - found == set(), "fixed: delete them from KNOWN_VIOLATIONS"


def test_the_layers_of_the_internals_page_are_these() -> None:
    # docs/internals.md draws the layers for contributors: the same modules, in the same layers.
    text = (ROOT / "docs" / "internals.md").read_text(encoding="utf-8")
    drawn = {}
    for row in re.findall(r"^\| (\w+) \| (`[^|]*`) \|", text, re.MULTILINE):
        drawn[row[0]] = tuple(name.strip("`/") for name in row[1].split(", "))
    assert drawn == LAYERS
    # And it walks through every module of the kernel.
    kernel = {f.name for f in (PACKAGE / "_engine").glob("_*.py")} - {"__init__.py"}
    assert sorted(name for name in kernel if f"`{name}`" not in text) == []


def test_only_the_backend_seam_imports_trio() -> None:
    # docs/internals.md: the one place the package reaches past anyio to trio.
    importers = set()
    for file in PACKAGE.rglob("*.py"):
        for stmt, _ in _raw_imports(ast.parse(file.read_text())):
            if isinstance(stmt, ast.Import):
                names = [alias.name for alias in stmt.names]
            else:
                names = [stmt.module or ""]
            if any(name == "trio" or name.startswith("trio.") for name in names):
                importers.add(file.relative_to(PACKAGE).as_posix())
    assert importers == {"_engine/_backend.py"}


def _write_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


FAKE_LAYERS = {"low": ("_low",), "high": ("_high", "sub")}


def test_layer_check_reports_upward_imports(tmp_path: Path) -> None:
    root = _write_package(
        tmp_path,
        {
            "__init__.py": "from pkg import _high\n",
            "_low.py": "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from pkg._high import X\n"
            "def f():\n    from . import _high\n",
            "_high.py": "import pkg._low\n",
        },
    )
    modules, imports = package_imports(root, "pkg")
    problems = layer_problems(modules, imports, FAKE_LAYERS, "pkg")
    assert problems == [
        "pkg._low (line 3): upward type-only import of pkg._high (layer 'high' is above 'low')",
        "pkg._low (line 5): upward import of pkg._high (layer 'high' is above 'low')",
        "import cycle: pkg._high -> pkg._low -> pkg._high",
    ]


def test_layer_check_reports_unknown_modules_and_root_imports(tmp_path: Path) -> None:
    root = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "_low.py": "import pkg\n",
            "_new.py": "",
            "sub/__init__.py": "from .. import _low\nfrom pkg import sub\n",
        },
    )
    modules, imports = package_imports(root, "pkg")
    assert modules == {"pkg", "pkg._low", "pkg._new", "pkg.sub"}
    problems = layer_problems(modules, imports, FAKE_LAYERS, "pkg")
    assert problems == [
        "pkg._new is in no layer; add '_new' to LAYERS in test_api.py",
        "pkg._low (line 1) imports the package root 'pkg'; "
        "import the private module that defines the name instead",
    ]


def test_type_only_imports_count_as_cycles(tmp_path: Path) -> None:
    root = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "_low.py": "import typing\nif typing.TYPE_CHECKING:\n    from pkg import _low2\n",
            "_low2.py": "from pkg import _low\n",
        },
    )
    modules, imports = package_imports(root, "pkg")
    layers = {"low": ("_low", "_low2")}
    assert layer_problems(modules, imports, layers, "pkg") == [
        "import cycle: pkg._low -> pkg._low2 -> pkg._low"
    ]


def test_layer_check_reports_underscore_names_imported_from_another_module(
    tmp_path: Path,
) -> None:
    root = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "_low.py": "_hidden = 1\nshown = 2\n",
            "_high.py": "from pkg._low import _hidden, shown\nfrom pkg import _low\n",
        },
    )
    modules, imports = package_imports(root, "pkg")
    assert layer_problems(modules, imports, FAKE_LAYERS, "pkg") == [
        "pkg._high (line 1) imports _hidden from pkg._low: underscore names stay in their "
        "module; make it public there (package-internal modules are private already)"
    ]


def private_attribute_problems(package_dir: Path, package: str) -> list[str]:
    """``obj._x`` reads or writes where no class of the module itself defines ``_x``.

    A module "defines" ``_x`` when it assigns ``self._x`` / ``cls._x``, names
    it in ``__slots__``, declares it in a class body, or defines a method
    ``_x``. Anything else is another module's private state.
    """
    problems: list[str] = []
    for file in sorted(package_dir.rglob("*.py")):
        tree = ast.parse(file.read_text())
        own: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id in ("self", "cls") and isinstance(node.ctx, ast.Store):
                    own.add(node.attr)
            elif isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                        own.add(stmt.name)
                    elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                        own.add(stmt.target.id)
                    elif isinstance(stmt, ast.Assign):
                        for target in stmt.targets:
                            if isinstance(target, ast.Name):
                                own.add(target.id)
                            if isinstance(target, ast.Name) and target.id == "__slots__":
                                own.update(
                                    c.value
                                    for c in ast.walk(stmt.value)
                                    if isinstance(c, ast.Constant) and isinstance(c.value, str)
                                )
        name = _module_name(file, package_dir, package)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            attr = node.attr
            if not attr.startswith("_") or attr.startswith("__") or attr in own:
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            problems.append(
                f"{name} (line {node.lineno}) uses {attr}, which no class of its own defines"
            )
    return problems


def test_no_module_touches_another_modules_private_attributes() -> None:
    # Named tuples' own API (_replace, _fields, ...) is public despite its underscore.
    allowed = {"_replace", "_fields", "_make", "_asdict"}
    problems = [
        p
        for p in private_attribute_problems(PACKAGE, "stageflow")
        if p.split(" uses ")[1].split(",")[0] not in allowed
    ]
    assert problems == []


def test_the_private_attribute_check_can_fail(tmp_path: Path) -> None:
    root = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "_a.py": "class A:\n    __slots__ = ('_x',)\n    def f(self, o):\n"
            "        return self._x, o._x, o._y\n",
            "_b.py": "def g(a):\n    a._x = 1\n",
        },
    )
    assert private_attribute_problems(root, "pkg") == [
        "pkg._a (line 4) uses _y, which no class of its own defines",
        "pkg._b (line 2) uses _x, which no class of its own defines",
    ]


# -------------------------------------------------------------- dependencies


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, requirement
    return _normalise(match.group(1))


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_requirement_name(r) for r in project.get("dependencies", [])}
    extras = {
        extra: {_requirement_name(r) for r in reqs}
        for extra, reqs in project.get("optional-dependencies", {}).items()
    }
    return runtime, extras


class External(NamedTuple):
    file: Path
    line: int
    module: str
    lazy: bool  # inside a function: runs only when a feature is used
    type_only: bool  # under TYPE_CHECKING: never runs


def _external_imports(files: list[Path], local: set[str]) -> Iterator[External]:
    for file in files:
        tree = ast.parse(file.read_text())
        top_level = {id(stmt) for stmt in tree.body}
        for stmt, type_only in _raw_imports(tree):
            if isinstance(stmt, ast.ImportFrom):
                if stmt.level or not stmt.module:
                    continue
                names = [stmt.module]
            else:
                names = [alias.name for alias in stmt.names]
            for module in names:
                top = module.partition(".")[0]
                if top in sys.stdlib_module_names or top == "__future__" or top in local:
                    continue
                yield External(file, stmt.lineno, module, id(stmt) not in top_level, type_only)


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    # Scans every installed distribution's file list: seconds each time, so once per run.
    return dict(importlib.metadata.packages_distributions())


@functools.cache
def _distributions(module: str) -> frozenset[str]:
    """The installed distributions that provide ``module``."""
    top = module.partition(".")[0]
    candidates = _packages_distributions().get(top, [])
    if len(candidates) <= 1:
        return frozenset(_normalise(c) for c in candidates)
    # A namespace package (opentelemetry): find the distribution that ships the module.
    spec = importlib.util.find_spec(module)
    origin = Path(spec.origin).resolve() if spec and spec.origin else None
    for candidate in candidates:
        dist = importlib.metadata.distribution(candidate)
        for file in dist.files or ():
            if origin is not None and Path(str(dist.locate_file(file))).resolve() == origin:
                return frozenset({_normalise(candidate)})
    return frozenset(_normalise(c) for c in candidates)


def _undeclared(externals: list[External], allowed_now: set[str], allowed_lazy: set[str]) -> list:
    problems = []
    for ext in externals:
        dists = _distributions(ext.module)
        where = f"{ext.file.relative_to(ROOT)}:{ext.line} imports {ext.module}"
        if not dists:
            problems.append(f"{where}, which no installed distribution provides")
            continue
        allowed = allowed_lazy if ext.lazy or ext.type_only else allowed_now
        if not dists & allowed:
            problems.append(f"{where} from {sorted(dists)}, which pyproject.toml does not declare")
    return problems


def _shipped_files() -> list[Path]:
    """The Python files the wheel ships (hatch's ``only-include``, else the package)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel = config.get("tool", {}).get("hatch", {}).get("build", {}).get("targets", {})
    included = wheel.get("wheel", {}).get("only-include", ["stageflow"])
    files: list[Path] = []
    for entry in included:
        path = ROOT / entry
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


# Modules that only run when an optional feature is in use, with the extra it needs:
# their module-level imports may come from that extra.
OPTIONAL_MODULES = {
    "_stageflow_pytest.py": "pytest",  # the pytest11 entry point: pytest loads it
    "stageflow/testing/_plugin.py": "pytest",  # imported by it when a case file is collected
    "stageflow/store/_postgres.py": "postgres",  # imported by open_store for postgresql:// only
    # stageflow.ui, the web inspector (`stageflow ui` imports it only when run)
    "stageflow/ui/_app.py": "ui",
    "stageflow/ui/_serve.py": "ui",
}


def test_every_package_import_is_a_declared_dependency() -> None:
    """Seed defect 1: a fresh install must have every module the package imports.

    A module-level import must be in ``dependencies``. An import that only runs
    when a feature is used (inside a function) or only for the type checker
    (``if TYPE_CHECKING:``) may instead come from an extra: a lazy import from
    a named extra (not ``dev``), a type-only one from any extra. A module of
    :data:`OPTIONAL_MODULES` may import its extra at module level.
    """
    runtime, extras = _declared()
    features = set().union(*(reqs for name, reqs in extras.items() if name != "dev"))
    every_extra = set().union(*extras.values())
    files = _shipped_files()
    assert PACKAGE / "_session.py" in files
    externals = list(_external_imports(files, {"stageflow"}))
    assert {e.module.partition(".")[0] for e in externals} >= {"anyio", "attrs", "yaml"}
    problems: list[str] = []
    for ext in externals:
        optional = OPTIONAL_MODULES.get(str(ext.file.relative_to(ROOT)))
        now = runtime | extras[optional] if optional else runtime
        if ext.type_only:
            problems += _undeclared([ext], now, runtime | every_extra)
        else:
            problems += _undeclared([ext], now, now | features)
    assert problems == []


def test_optional_modules_exist_and_the_rest_imports_without_their_extras() -> None:
    for module, extra in OPTIONAL_MODULES.items():
        assert (ROOT / module).is_file(), module
        assert extra in _declared()[1], extra
    # Importing the package and its public submodules must not need pytest.
    code = (
        "import sys\n"
        "sys.modules['pytest'] = None  # as if it were not installed\n"
        "import stageflow, stageflow.testing, stageflow.builtins, stageflow.tracing\n"
        "import stageflow.logging\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=ROOT)


# Imported by test fixtures precisely because no distribution provides them.
DELIBERATELY_MISSING = {
    "stageflow_test_provider_sdk_that_is_not_installed",
    # Benchmarks only: `make bench` installs it from benchmarks/requirements.txt
    # into .bench-venv; it is never a dependency of stageflow.
    "langgraph",
}


def test_every_test_example_and_benchmark_import_is_declared() -> None:
    runtime, extras = _declared()
    allowed = runtime | set().union(*extras.values())
    files = [
        f
        for folder in ("tests", "examples", "benchmarks")
        if (ROOT / folder).is_dir()
        for f in sorted((ROOT / folder).rglob("*.py"))
    ]
    # Modules of the checkout itself: the package, helpers next to the tests and examples.
    local = {"stageflow"} | {f.stem for f in files} | {f.parent.name for f in files}
    local |= DELIBERATELY_MISSING
    problems = _undeclared(list(_external_imports(files, local)), allowed, allowed)
    assert problems == []


def test_dependency_check_reports_an_undeclared_import(tmp_path: Path) -> None:
    module = tmp_path / "uses_yaml.py"
    module.write_text("import yaml\n")
    external = list(_external_imports([module], set()))
    assert [(e.module, e.lazy, e.type_only) for e in external] == [("yaml", False, False)]
    found = _undeclared(
        [e._replace(file=ROOT / "stageflow" / "x.py") for e in external], {"anyio"}, {"anyio"}
    )
    assert found == [
        "stageflow/x.py:1 imports yaml from ['pyyaml'], which pyproject.toml does not declare"
    ]


def test_namespace_packages_resolve_to_the_distribution_that_ships_the_module() -> None:
    pytest.importorskip("opentelemetry.sdk")
    assert _distributions("opentelemetry.trace") == {"opentelemetry-api"}
    assert _distributions("opentelemetry.sdk.trace") == {"opentelemetry-sdk"}


def test_importing_the_package_configures_no_logging() -> None:
    # DESIGN 7: a library never configures logging on import (the CLI does).
    code = (
        "import logging, structlog, stageflow\n"
        "assert not logging.getLogger().handlers, logging.getLogger().handlers\n"
        "assert not structlog.is_configured()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_public_classes_and_functions_report_stageflow_as_their_module() -> None:
    elsewhere = {
        name: value.__module__
        for name in stageflow.__all__
        if (value := getattr(stageflow, name)) is not None
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ != "stageflow"
    }
    assert elsewhere == {}
    assert "stageflow.StageError" in repr(stageflow.StageError)


def test_models_still_load_after_their_module_is_renamed() -> None:
    # cattrs resolves string annotations through __module__: they were resolved first.
    pipeline = stageflow.Pipeline.from_dict(
        {"api_version": "1.0", "entry": "end", "nodes": [{"id": "end", "type": "terminal"}]}
    )
    assert pipeline.limits == stageflow.Limits()


# ------------------------------------------------------------------- schemas


def test_the_published_schemas_are_the_packaged_ones() -> None:
    # One source of truth: stageflow/_schemas/ ships in the wheel and is what the
    # loaders read; schemas/ is a plain copy for editors and readers of the
    # repository (a real folder: symlinks break Windows checkouts). Edit the
    # packaged files, then `cp stageflow/_schemas/*.json schemas/`.
    root = PACKAGE.parent
    published = root / "schemas"
    assert published.is_dir()
    assert not published.is_symlink()
    packaged = {p.name: p.read_bytes() for p in (PACKAGE / "_schemas").glob("*.json")}
    copies = {p.name: p.read_bytes() for p in published.glob("*.json")}
    assert packaged
    assert copies.keys() == packaged.keys()
    stale = sorted(name for name in packaged if copies[name] != packaged[name])
    assert stale == [], f"run: cp stageflow/_schemas/*.json schemas/ ({stale} differ)"


_REGISTERED = """
import stageflow

registry = stageflow.StageRegistry()


@registry.register("Typed")
async def typed(ctx: stageflow.StageContext) -> dict[str, str]:
    return {}


@registry.register("Nothing")
async def nothing(ctx: stageflow.StageContext) -> None:
    return None


@stageflow.register_stage("Class")
class Class(stageflow.BaseStage):
    async def run(self, ctx: stageflow.StageContext) -> dict[str, object]:
        return {}


@registry.register("Sync")
def sync(ctx: stageflow.StageContext) -> dict[str, str]:
    return {}


@registry.register("List")
async def a_list(ctx: stageflow.StageContext) -> list[int]:
    return []
"""


def test_mypy_refuses_what_register_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # register() was typed to take anything: a plain function, or one that
    # returns no mapping, passed `mypy --strict` and failed only when run.
    mypy_api = pytest.importorskip("mypy.api")
    program = tmp_path / "program.py"
    program.write_text(_REGISTERED)
    monkeypatch.chdir(ROOT)  # where mypy finds this stageflow
    out, _, status = mypy_api.run(
        ["--strict", "--no-incremental", "--follow-imports=silent", str(program)]
    )
    errors = [line.split(": error: ")[1] for line in out.splitlines() if ": error: " in line]
    assert len(errors) == 2, out
    assert "Callable[[StageContext], dict[str, str]]" in errors[0], out
    assert "Coroutine[Any, Any, list[int]]" in errors[1], out
    assert status == 1
