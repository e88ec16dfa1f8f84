"""Stage registries for cases: importing stage modules, and replacing stages with mocks."""

from __future__ import annotations

import builtins
import importlib
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import anyio

from stageflow import (
    BaseStage,
    Pipeline,
    Problem,
    StageContext,
    StageEntry,
    StageNode,
    StageRegistry,
)
from stageflow._json import a_python_type, thaw
from stageflow._specs import compile_schema, json_message
from stageflow._stage_modules import (
    StagesModuleError,
    merge_registries,
    registry_of,
)
from stageflow._stages import default_registry
from stageflow.testing._model import (
    Case,
    CaseValidationError,
    MockError,
    StageMock,
    dict_hint,
)

__all__ = [
    "exception_class",
    "missing_outputs",
    "mock_registry",
    "registry_from_modules",
    "unused_mocks",
]

# Synthetic exception classes, one per name, so that two mocks raising
# "RateLimited" raise the same class.
_SYNTHETIC: dict[str, type[Exception]] = {}


def exception_class(name: str) -> type[Exception]:
    """Resolve the exception type a mock raises from its name.

    A built-in exception name (``ValueError``) gives that class; a dotted
    ``module.Class`` path is imported; any other identifier gives an
    ``Exception`` subclass of that name (the same class for the same name).

    Raises:
        CaseValidationError: a dotted path that cannot be imported or is not
            an exception class, or a class (built-in or imported) that is
            a ``BaseException`` but no ``Exception`` (``KeyboardInterrupt``).
    """
    if "." not in name:
        found = getattr(builtins, name, None)
        if isinstance(found, type) and issubclass(found, Exception):
            return found
        if isinstance(found, type) and issubclass(found, BaseException):
            raise CaseValidationError([Problem("$", _not_an_exception(name))])
        cls = _SYNTHETIC.get(name)
        if cls is None:
            cls = type(name, (Exception,), {"__module__": "stageflow.testing.mocked"})
            _SYNTHETIC[name] = cls
        return cls
    module_name, _, attr = name.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise CaseValidationError(
            [
                Problem(
                    "$",
                    f"mock error type {name!r} cannot be imported ({exc}); use a built-in "
                    "exception name, an importable module.Class, or a plain name",
                )
            ]
        ) from None
    if isinstance(found, type) and issubclass(found, BaseException):
        if not issubclass(found, Exception):
            raise CaseValidationError([Problem("$", _not_an_exception(name))])
    else:
        raise CaseValidationError(
            [Problem("$", f"mock error type {name!r} is not an exception class")]
        )
    return found


def _not_an_exception(name: str) -> str:
    # KeyboardInterrupt, SystemExit, ... end the whole run, not the stage's attempt.
    return (
        f"mock error type {name!r} is a BaseException but not an Exception, which would "
        "stop the whole run rather than fail the stage; a mock raises Exception "
        "subclasses (a plain name such as 'Interrupted' gives one)"
    )


def _make_error(error: MockError) -> Exception:
    return exception_class(error.type)(error.message)


def _mock_stage(name: str, mock: StageMock) -> type[BaseStage]:
    outputs = thaw(mock.outputs)

    class MockStage(BaseStage):
        __slots__ = ()

        async def run(self, ctx: StageContext) -> Mapping[str, Any]:
            if mock.delay:
                await anyio.sleep(mock.delay)
            error = mock.error_for(ctx.attempt)
            if error is not None:
                raise _make_error(error)
            # A fresh copy per attempt: the engine owns what a stage returns.
            result: dict[str, Any] = thaw(outputs)
            return result

    MockStage.__name__ = MockStage.__qualname__ = f"Mock[{name}]"
    return MockStage


def mock_registry(
    registry: StageRegistry, mocks: Mapping[str, StageMock], *, where: str = "$"
) -> StageRegistry:
    """A new registry with the stages of ``registry``, those in ``mocks`` replaced.

    Each mock keeps the real stage's spec, so a pipeline validates against the
    mocked registry exactly as against the real one. ``registry`` is not changed.

    Args:
        registry: the real stages.
        mocks: stage name -> mock.
        where: location of the mocks in the case file, for error messages.

    Raises:
        CaseValidationError: a mock names a stage that is not registered, or
            its outputs do not match the stage's declared outputs schema.
        TypeError: ``registry`` is no :class:`~stageflow.StageRegistry`, or
            ``mocks`` no mapping of stage names to :class:`StageMock` objects.
    """
    _check_arguments(registry, mocks)
    problems: list[Problem] = []
    core = _core_names()
    for name, mock in mocks.items():
        if name in core:
            problems.append(
                Problem(
                    f"{where}.mocks.{name}",
                    f"{name!r} is a core stage, which cannot be mocked; it already runs in "
                    "virtual time and takes scripted inputs, so test it as it is",
                )
            )
            continue
        if name not in registry:
            known = ", ".join(registry.names()) or "none"
            problems.append(
                Problem(
                    f"{where}.mocks.{name}",
                    f"mock for stage {name!r}, which is not registered (known: {known}); "
                    "fix the name or add the module that registers it to 'stages'",
                )
            )
            continue
        spec = registry.get(name).spec
        if spec.outputs is not None:
            problems.extend(
                Problem(
                    f"{where}.mocks.{name}.outputs",
                    f"mock for stage {name!r} returns outputs that do not match the stage's "
                    f"declared outputs schema: {json_message(e)}; fix the mock's outputs",
                )
                for e in compile_schema(spec.outputs).iter_errors(thaw(mock.outputs))
            )
        for i, error in enumerate(mock.errors):
            location = f"{where}.mocks.{name}.errors[{i}].type"
            try:
                _make_error(error)
            except CaseValidationError as exc:
                problems.extend(Problem(location, p.message) for p in exc.problems)
            except Exception as exc:
                problems.append(
                    Problem(
                        location,
                        f"mock error type {error.type!r} cannot be raised with just a message "
                        f"({type(exc).__name__}: {exc}); use an exception type that takes one",
                    )
                )
    if problems:
        raise CaseValidationError(problems)
    mocked = StageRegistry()
    for entry in registry.catalogue():
        if entry.name in core:
            continue  # every registry has the core stages
        replacement = mocks.get(entry.name)
        if replacement is None:
            _copy_entry(mocked, entry)
        else:
            mocked.add(
                _mock_stage(entry.name, replacement),
                name=entry.name,
                spec=entry.spec,
                source=f"stageflow.testing mock of {entry.source}",
            )
    return mocked


def _check_arguments(registry: object, mocks: object) -> None:
    if not isinstance(registry, StageRegistry):
        raise TypeError(
            f"mock_registry() was given {a_python_type(registry)} for the registry; pass the "
            "stageflow.StageRegistry that holds the real stages"
        )
    example = "{'Fetch': StageMock(outputs={...})}"
    if not isinstance(mocks, Mapping):
        raise TypeError(
            f"mock_registry() was given {a_python_type(mocks)} for the mocks; pass a dict "
            f"of stage name -> StageMock, such as {example}"
        )
    for name, mock in mocks.items():
        if not isinstance(mock, StageMock):
            raise TypeError(
                f"mock_registry() was given {a_python_type(mock)} as the mock of {name!r}; "
                f"pass a StageMock, such as {example}{dict_hint(mock)}"
            )


def _stage_nodes(pipeline: Pipeline) -> Iterator[StageNode]:
    """The stage nodes of ``pipeline`` and of its subpipelines."""
    yield from (n for n in pipeline.nodes if isinstance(n, StageNode))
    for sub in pipeline.subpipelines.values():
        yield from _stage_nodes(sub)


def missing_outputs(case: Case, pipeline: Pipeline) -> list[Problem]:
    """A problem for each output a node maps that its stage's mock never returns.

    The node would fail with ``StageOutputError`` (whose message says to
    change the stage or the pipeline) every time the mock succeeds. Only a
    mock that succeeds on the first attempt is checked: whether one that
    fails it is ever retried depends on the node's retry policy.
    """
    problems: list[Problem] = []
    for node in _stage_nodes(pipeline):
        mock = case.mocks.get(node.stage)
        if mock is None or mock.error_for(1) is not None:
            continue
        problems.extend(
            Problem(
                f"{case.location}.mocks.{node.stage}.outputs",
                f"mock for stage {node.stage!r} returns no {key!r}, which node {node.id!r} "
                f"writes to {path!r}, so the node fails whenever the mock succeeds; add "
                f"{key!r} to the mock's outputs",
            )
            for key, path in node.outputs.items()
            if key not in mock.outputs
        )
    return problems


def unused_mocks(case: Case, pipeline: Pipeline) -> list[Problem]:
    """A problem for each mock of ``case`` whose stage no node of ``pipeline`` uses.

    Such a mock changes nothing: the case would test the real stage it meant to replace.
    """
    used = {n.stage for n in _stage_nodes(pipeline)} - _core_names()
    return [
        Problem(
            f"{case.location}.mocks.{name}",
            f"mock for stage {name!r}, which no node of pipeline {pipeline.name!r} uses, "
            f"so it replaces nothing; mock one of the stages it uses "
            f"({', '.join(sorted(used)) or 'none'}) or remove it",
        )
        for name in case.mocks
        if name not in used
    ]


def _core_names() -> frozenset[str]:
    """The core stages (``WaitStage``, ``SleepStage``, ...) that every registry holds."""
    return frozenset(StageRegistry().names())


def _copy_entry(registry: StageRegistry, entry: StageEntry) -> None:
    registry.add(entry.target, name=entry.name, spec=entry.spec, source=entry.source)


def registry_from_modules(modules: Sequence[str], *, source: str | None = None) -> StageRegistry:
    """The stages of ``modules``, in one registry.

    Each entry is a stages module reference, read by the loader the CLI's
    ``--stages`` shares (:mod:`stageflow._stage_modules`): a module name
    (``myapp.stages``), a path to a ``.py`` file, either with ``:ATTRIBUTE``.
    A module's stages are those of the named attribute or of its ``registry``
    attribute (a :class:`StageRegistry`, or a function returning one); a
    module without one is taken to register into the default registry. No
    modules: the default registry.

    Raises:
        CaseValidationError: a module cannot be imported, or the named
            attribute is not a registry.
        StageConflictError: two modules register the same stage name.
    """
    if not modules:
        return default_registry()
    registries: list[StageRegistry] = []
    problems: list[Problem] = []
    for ref in modules:
        try:
            registries.append(registry_of(ref, unique_name=True))
        except StagesModuleError as exc:
            # The loader's message ends "(traceback below)" for a module that raised.
            traceback = f"\n{textwrap.indent(exc.detail, '      ')}" if exc.detail else ""
            problems.append(Problem("$.stages", f"stages module {exc}{traceback}"))
    if problems:
        raise CaseValidationError(problems, source=source)
    unique = list(dict.fromkeys(registries))
    if len(unique) == 1:
        return unique[0]
    return merge_registries(unique)
