"""stageflow: run pipelines described as JSON on structured concurrency.

A pipeline is a graph of nodes (stage, condition, parallel, terminal) loaded
from JSON with :meth:`Pipeline.from_dict` or :meth:`Pipeline.load`. A
:class:`Session` runs it against a context and returns a
:class:`SessionResult`; every state change is an :class:`Event` in the
session history. Stages are registered in a :class:`StageRegistry`.

Everything public is importable from here; modules whose names start with an
underscore are private.
"""

from stageflow import jsonlogic
from stageflow._context import MISSING
from stageflow._core_stages import SleepStage, WaitStage
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
    SessionStateError,
    SessionTimeoutError,
    StageConflictError,
    StageContractError,
    StageError,
    StageflowError,
    StageNotFoundError,
    StageOutputError,
    SubpipelineError,
    TracingSetupError,
)
from stageflow._events import Event, EventCallback, EventStream
from stageflow._inputs import InputReceipt
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
    "RetryPolicy",
    "STAGE_PACK_GROUP",
    "Session",
    "SessionResult",
    "SessionStateError",
    "SessionStatus",
    "SessionTimeoutError",
    "SleepStage",
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
    "StageSpec",
    "StageflowError",
    "SubpipelineError",
    "SubpipelineNode",
    "TerminalNode",
    "TracingSetupError",
    "ValidateEvents",
    "WaitStage",
    "get_stages",
    "jsonlogic",
    "list_stage_packs",
    "pipeline_schema",
    "register_stage",
]
