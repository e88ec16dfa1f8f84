"""Immutable declarations of what a stage reads, writes, waits for and emits."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import jsonschema
import jsonschema_rs

from stageflow._errors import DefinitionError
from stageflow._json import freeze, thaw
from stageflow._model import RetryPolicy

__all__ = ["DocumentSchema", "EventSpec", "InputSpec", "StageSpec", "compile_schema"]


def _frozen_schema(value: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if value is None:
        return None
    frozen: Mapping[str, Any] = freeze(value)
    return frozen


def _check_schema(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    """Validator: a schema field holds a valid draft 2020-12 JSON Schema (or ``None``)."""
    if value is None:
        return
    try:
        jsonschema.Draft202012Validator.check_schema(thaw(value))
    except jsonschema.SchemaError as exc:
        where = "".join(f"[{p!r}]" for p in exc.absolute_path)
        raise DefinitionError(
            f"{type(instance).__name__}.{attribute.name}{where} is not a valid JSON Schema "
            f"(draft 2020-12): {exc.message}; fix the schema, or pass None to accept any value"
        ) from None


def compile_schema(schema: Mapping[str, Any]) -> jsonschema.protocols.Validator:
    """Build a draft 2020-12 validator for a (possibly frozen) schema."""
    return jsonschema.Draft202012Validator(thaw(schema))


class DocumentSchema:
    """One of stageflow's own schemas: a fast yes, and a full explanation of a no.

    ``jsonschema-rs`` (compiled, about a hundred times faster here) decides
    whether a document is valid; only when it is not does ``jsonschema`` walk
    it again for the errors, whose messages and locations stageflow explains.
    For plain JSON (what ``json.loads`` gives) the result is ``jsonschema``'s;
    the fast check also takes a tuple for an array.
    """

    __slots__ = ("_fast", "_full")

    def __init__(self, schema: Mapping[str, Any]) -> None:
        plain = thaw(schema)
        self._full = jsonschema.Draft202012Validator(plain)
        self._fast = jsonschema_rs.Draft202012Validator(plain)

    def iter_errors(self, instance: Any) -> Iterator[jsonschema.ValidationError]:
        """The validation errors of ``instance`` (none at all when it is valid)."""
        try:
            if self._fast.is_valid(instance):
                return iter(())
        except (TypeError, ValueError, OverflowError):
            pass  # not plain JSON for the fast check (tuples, huge ints): the full one decides
        return self._full.iter_errors(instance)


@attrs.frozen
class InputSpec:
    """An external input a stage may wait for.

    Attributes:
        type: the input type, as passed to ``session.send_input(type, ...)``.
        schema: JSON Schema of the payload, or ``None`` for any JSON value.
        description: what the input is, for people and catalogues.
    """

    type: str
    schema: Mapping[str, Any] | None = attrs.field(
        default=None, converter=_frozen_schema, validator=_check_schema
    )
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
    schema: Mapping[str, Any] | None = attrs.field(
        default=None, converter=_frozen_schema, validator=_check_schema
    )
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
        input_from_config: for a stage that waits for the input type its
            node's ``config`` names (as ``WaitStage`` does with ``input``):
            that config key. Each node then accepts exactly that type, with
            the payload schema in its ``config.input_schema`` if it gives one,
            so the session can reject input types no wait accepts and, in
            ``strict`` mode, payloads that do not fit.
    """

    description: str = ""
    arguments: Mapping[str, Any] | None = attrs.field(
        default=None, converter=_frozen_schema, validator=_check_schema
    )
    config: Mapping[str, Any] | None = attrs.field(
        default=None, converter=_frozen_schema, validator=_check_schema
    )
    outputs: Mapping[str, Any] | None = attrs.field(
        default=None, converter=_frozen_schema, validator=_check_schema
    )
    allowed_inputs: tuple[InputSpec, ...] = attrs.field(default=(), converter=tuple)
    allowed_events: tuple[EventSpec, ...] = attrs.field(default=(), converter=tuple)
    retry: RetryPolicy | None = None
    timeout: float | None = None
    input_from_config: str | None = None
