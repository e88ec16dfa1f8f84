"""Immutable declarations of what a stage reads, writes, waits for and emits."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import attrs
import jsonschema

from stageflow._json import freeze, thaw
from stageflow._model import RetryPolicy

__all__ = ["EventSpec", "InputSpec", "StageSpec", "compile_schema"]


def _frozen_schema(value: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if value is None:
        return None
    schema = thaw(value)
    jsonschema.Draft202012Validator.check_schema(schema)
    frozen: Mapping[str, Any] = freeze(schema)
    return frozen


def compile_schema(schema: Mapping[str, Any]) -> jsonschema.protocols.Validator:
    """Build a draft 2020-12 validator for a (possibly frozen) schema."""
    return jsonschema.Draft202012Validator(thaw(schema))


@attrs.frozen
class InputSpec:
    """An external input a stage may wait for.

    Attributes:
        type: the input type, as passed to ``session.send_input(type, ...)``.
        schema: JSON Schema of the payload, or ``None`` for any JSON value.
        description: what the input is, for people and catalogues.
    """

    type: str
    schema: Mapping[str, Any] | None = attrs.field(default=None, converter=_frozen_schema)
    description: str = ""

    @functools.cached_property
    def validator(self) -> jsonschema.protocols.Validator | None:
        """The compiled payload schema (built once), or ``None`` without a schema."""
        return None if self.schema is None else compile_schema(self.schema)


@attrs.frozen
class EventSpec:
    """An event a stage may emit with ``ctx.emit(type, payload)``.

    Attributes:
        type: the event type.
        schema: JSON Schema of the payload, or ``None`` for any JSON object.
        description: what the event means.
    """

    type: str
    schema: Mapping[str, Any] | None = attrs.field(default=None, converter=_frozen_schema)
    description: str = ""

    @functools.cached_property
    def validator(self) -> jsonschema.protocols.Validator | None:
        """The compiled payload schema (built once), or ``None`` without a schema."""
        return None if self.schema is None else compile_schema(self.schema)


@attrs.frozen
class StageSpec:
    """What a stage declares about itself; checked when a pipeline is loaded.

    Attributes:
        description: one line for the stage catalogue.
        arguments: JSON Schema (an object schema) of the arguments; its
            ``required`` names must be mapped by every node using the stage,
            and with ``additionalProperties: false`` no other names may be.
        config: JSON Schema of the node's ``config``, checked at load time.
        outputs: JSON Schema (an object schema) of what the stage returns;
            a node may only map output keys listed in its ``properties``.
        allowed_inputs: the inputs the stage may wait for; when not empty,
            waiting for another type is an error.
        allowed_events: the events the stage may emit; when not empty,
            emitting another type is an error.
        retry: default retry policy of nodes using the stage.
        timeout: default seconds per attempt of nodes using the stage.
    """

    description: str = ""
    arguments: Mapping[str, Any] | None = attrs.field(default=None, converter=_frozen_schema)
    config: Mapping[str, Any] | None = attrs.field(default=None, converter=_frozen_schema)
    outputs: Mapping[str, Any] | None = attrs.field(default=None, converter=_frozen_schema)
    allowed_inputs: tuple[InputSpec, ...] = attrs.field(default=(), converter=tuple)
    allowed_events: tuple[EventSpec, ...] = attrs.field(default=(), converter=tuple)
    retry: RetryPolicy | None = None
    timeout: float | None = None
