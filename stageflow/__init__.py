"""stageflow: run pipelines described as JSON on structured concurrency.

A pipeline is a graph of nodes (stage, condition, parallel, terminal) loaded
from JSON with :meth:`Pipeline.from_dict` or :meth:`Pipeline.load`. A
:class:`Session` runs it against a context and returns a
:class:`SessionResult`; every state change is an :class:`Event` in the
session history. Stages are registered in a :class:`StageRegistry`.

Everything public is importable from here; modules whose names start with an
underscore are private.
"""

# General layout (the import layers are checked by tests/test_api.py, bottom up):
#
# - bottom: errors, JSON helpers, JsonLogic, the context;
# - model: the frozen node models, stage specs and the stage registry;
# - loading: pipeline loading and graph checks, events, results, plugins,
#   telemetry helpers;
# - kernel: ``_engine/``, the self-contained engine (frames, executors, the
#   run's choke point, snapshots; see docs/internals.md);
# - engine: ``_session.py``, the public Session handle built on the kernel;
# - store: ``store/``, sessions at scale (session stores, SessionService, Worker),
#   a public submodule; its two roles are re-exported here too;
# - top: the CLI, the test kit, tracing and logging set-up, the built-in stages,
#   the web inspector (``ui``, needs the ``ui`` extra).
#
# This file re-exports the public names of the private modules, and makes them
# report ``stageflow`` as their module, so tracebacks and help() say
# ``stageflow.StageError``, not ``stageflow._errors.StageError``.

from stageflow import jsonlogic
from stageflow._context import MISSING
from stageflow._core_stages import SleepStage, WaitStage
from stageflow._engine._inputs import InputReceipt
from stageflow._errors import (
    ConditionError,
    ContextError,
    ContextPathError,
    DefinitionError,
    InputRejectedError,
    InputTimeoutError,
    JsonLogicError,
    LimitExceededError,
    LoggingSetupError,
    MapError,
    MergeConflictError,
    NodeError,
    NodeTimeoutError,
    NonJsonValueError,
    ParallelRunError,
    PipelineValidationError,
    PluginLoadError,
    PluginNotFoundError,
    Problem,
    ProblemsError,
    RegistryError,
    RestoredError,
    RunSuspended,
    SessionStateError,
    SessionTimeoutError,
    SnapshotError,
    SnapshotMismatchError,
    SnapshotVersionError,
    StageConflictError,
    StageContractError,
    StageError,
    StageflowError,
    StageNotFoundError,
    StageOutputError,
    StageSchemaError,
    SubpipelineError,
    TracingSetupError,
)
from stageflow._events import Event, EventCallback, EventStream
from stageflow._model import (
    API_VERSIONS,
    ConditionBranch,
    ConditionNode,
    ErrorHandler,
    Limits,
    MapNode,
    MergeStrategy,
    Node,
    ParallelNode,
    ParallelPolicy,
    Reducer,
    RetryPolicy,
    StageNode,
    SubpipelineNode,
    TerminalNode,
    ValidateEvents,
)
from stageflow._pipeline import Pipeline
from stageflow._plugins import (
    STAGE_PACK_GROUP,
    FailedPack,
    LoadedPack,
    PluginReport,
    StagePack,
    list_stage_packs,
)
from stageflow._result import SessionResult, SessionStatus
from stageflow._schema_export import pipeline_schema
from stageflow._session import Session
from stageflow._specs import EventSpec, InputSpec, StageSpec
from stageflow._stages import (
    BaseStage,
    StageContext,
    StageEntry,
    StageFunction,
    StageRegistry,
    get_stages,
    register_stage,
)
from stageflow._version import __version__ as __version__
from stageflow.store import SessionService, Worker

__all__ = [
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
    "list_stage_packs",
    "pipeline_schema",
    "register_stage",
]


def _fix_module_metadata() -> None:
    """Give every public class and function ``stageflow`` as its ``__module__``.

    The string annotations of attrs classes are resolved first, in their own
    modules: resolving them later (cattrs does, on first use) looks names up
    in the module ``__module__`` names.
    """
    import attrs

    for name in __all__:
        value = globals()[name]
        if attrs.has(value):
            attrs.resolve_types(value)
        module = getattr(value, "__module__", None)
        inner = ("stageflow._", "stageflow.store._")
        private = isinstance(module, str) and module.startswith(inner)
        if private and (isinstance(value, type) or callable(value)):
            value.__module__ = __name__


_fix_module_metadata()
del _fix_module_metadata
