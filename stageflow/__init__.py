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
from stageflow._errors import (
    ConditionError,
    ContextError,
    ContextPathError,
    DefinitionError,
    JsonLogicError,
    LimitExceededError,
    MergeConflictError,
    NodeError,
    NonJsonValueError,
    ParallelRunError,
    PipelineValidationError,
    Problem,
    RegistryError,
    SessionStateError,
    StageConflictError,
    StageError,
    StageflowError,
    StageNotFoundError,
    StageOutputError,
)
from stageflow._events import Event, EventCallback, EventStream
from stageflow._model import (
    API_VERSIONS,
    ConditionBranch,
    ConditionNode,
    Limits,
    MergeStrategy,
    Node,
    ParallelNode,
    ParallelPolicy,
    Reducer,
    StageNode,
    TerminalNode,
)
from stageflow._pipeline import Pipeline
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

__version__ = "0.1.0"

__all__ = [
    "API_VERSIONS",
    "MISSING",
    "BaseStage",
    "ConditionBranch",
    "ConditionError",
    "ConditionNode",
    "ContextError",
    "ContextPathError",
    "DefinitionError",
    "Event",
    "EventCallback",
    "EventSpec",
    "EventStream",
    "InputSpec",
    "JsonLogicError",
    "LimitExceededError",
    "Limits",
    "MergeConflictError",
    "MergeStrategy",
    "Node",
    "NodeError",
    "NonJsonValueError",
    "ParallelNode",
    "ParallelPolicy",
    "ParallelRunError",
    "Pipeline",
    "PipelineValidationError",
    "Problem",
    "Reducer",
    "RegistryError",
    "Session",
    "SessionResult",
    "SessionStateError",
    "SessionStatus",
    "StageConflictError",
    "StageContext",
    "StageEntry",
    "StageError",
    "StageFunction",
    "StageNode",
    "StageNotFoundError",
    "StageOutputError",
    "StageRegistry",
    "StageSpec",
    "StageflowError",
    "TerminalNode",
    "get_stages",
    "jsonlogic",
    "pipeline_schema",
    "register_stage",
]
