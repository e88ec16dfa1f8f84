"""Immutable declarations of what a stage reads, writes, waits for and emits."""

from __future__ import annotations

import datetime
import functools
import itertools
import json
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

import attrs
import jsonschema
import jsonschema.validators
import jsonschema_rs
import jsonschema_specifications
import referencing
import referencing.exceptions
from referencing.jsonschema import DRAFT202012

from stageflow._errors import DefinitionError
from stageflow._json import a_json_type, a_python_type, freeze, thaw, with_article
from stageflow._model import RetryPolicy, seconds_check

__all__ = [
    "ENGINE_EVENT_TYPES",
    "DocumentSchema",
    "EventSpec",
    "InputSpec",
    "MAX_DOCUMENT_ERRORS",
    "StageSpec",
    "compile_schema",
    "each_instance",
    "event_type_problem",
    "json_message",
    "json_text",
    "one_instance",
]

ENGINE_EVENT_TYPES: Final = frozenset(
    {
        "branch_cancelled",
        "branch_failed",
        "branch_finished",
        "branch_started",
        "cleanup_failed",
        "contract_violation",
        "error_routed",
        "event_validation_failed",
        "input_queued",
        "input_received",
        "input_rejected",
        "input_timeout",
        "input_unexpected",
        "inputs_discarded",
        "map_item_cancelled",
        "map_item_completed",
        "map_item_failed",
        "map_item_started",
        "node_cancelled",
        "node_failed",
        "node_finished",
        "node_retrying",
        "node_started",
        "replay_diverged",
        "session_cancelled",
        "session_completed",
        "session_failed",
        "session_resumed",
        "session_started",
        "session_suspended",
        "session_timed_out",
        "subscriber_overflow",
        "waiting_for_input",
    }
)
"""The event types the engine records (or gives a subscriber); a stage may not emit them.

``docs/concepts.md`` lists them with their payloads (a test holds the two equal).
"""


def event_type_problem(type: object) -> str | None:
    """Why ``type`` cannot be the type of a stage's own event, or ``None`` when it can.

    A stage's event type is a non-empty string that is not one of
    :data:`ENGINE_EVENT_TYPES` (the history, snapshots and every consumer read
    those as the engine's own).
    """
    if not isinstance(type, str):
        return f"an event type is a string, not {a_json_type(type)}"
    if not type.strip():
        return "an event type is a non-empty string"
    if type in ENGINE_EVENT_TYPES:
        return f"{type!r} is an event type the engine records itself"
    return None


def _check_event_type(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    """Validator: an :class:`EventSpec` declares a type a stage may emit."""
    problem = event_type_problem(value)
    if problem is not None:
        raise DefinitionError(
            f"EventSpec type {value!r} cannot be declared: {problem}; name the event after "
            "what happened in your stage, such as 'order_priced'"
        )


def _check_input_type(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    """Validator: an :class:`InputSpec` declares a type a sender can send (a non-empty string)."""
    if isinstance(value, str) and value.strip():
        return
    problem = (
        "an input type is a non-empty string"
        if isinstance(value, str)
        else f"an input type is a string, not {a_json_type(value)}"
    )
    raise DefinitionError(
        f"InputSpec type {value!r} cannot be declared: {problem}; name what the sender "
        "passes to session.send_input(type, payload), such as 'approval'"
    )


def _passed(value: object) -> str:
    # A mapping may be frozen (a mappingproxy) before the check: call it what was passed.
    return "a dict" if isinstance(value, Mapping) else a_python_type(value)


def _no_hint(value: object) -> str:
    return ""


def each_instance(kind: type, example: str, *, hint: Callable[[object], str] = _no_hint) -> Any:
    """Validator: a sequence, or a mapping's values, of ``kind`` objects only.

    The error names the field and the item's index or key, and says what to
    pass (``example``, then ``hint(item)``).
    """

    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        items = value.items() if isinstance(value, Mapping) else enumerate(value)
        for key, item in items:
            if not isinstance(item, kind):
                raise DefinitionError(
                    f"{type(instance).__name__}.{attribute.name}[{key!r}] is {_passed(item)}, "
                    f"not {with_article(kind.__name__)}; pass {example}{hint(item)}"
                )

    return check


def one_instance(
    kind: type, example: str, *, optional: bool = False, hint: Callable[[object], str] = _no_hint
) -> Any:
    """Validator: a ``kind`` object (or ``None`` when ``optional``); see :func:`each_instance`."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, kind) and not (optional and value is None):
            raise DefinitionError(
                f"{type(instance).__name__}({attribute.name}=...) was given {_passed(value)}; "
                f"pass {example}{', or None' if optional else ''}{hint(value)}"
            )

    return check


def json_text(value: Any, limit: int = 60) -> str:
    """``value`` written as compact JSON (``true``, ``{"x": 1}``), cut to ``limit`` characters."""
    try:
        # JSON escapes the C0 controls; DEL and the C1 controls are escaped too,
        # so that a message shows every control character it quotes.
        text = json.dumps(thaw(value), ensure_ascii=False, separators=(", ", ": ")).translate(
            _DEL_AND_C1
        )
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_DEL_AND_C1: Final = {code: f"\\u{code:04x}" for code in range(0x7F, 0xA0)}


_JSON_TYPES: Final = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
    type(None): "null",
}

_BOUNDS: Final = {
    "minimum": "less than the minimum of",
    "maximum": "greater than the maximum of",
    "exclusiveMinimum": "not greater than",
    "exclusiveMaximum": "not less than",
}


def json_message(error: jsonschema.ValidationError) -> str:
    """A JSON Schema error said in JSON terms: values as JSON, not Python reprs.

    ``jsonschema`` writes ``True is not of type 'string'`` and ``{'x': 1}``;
    a pipeline author wrote ``true`` and ``{"x": 1}``.
    """
    keyword, instance = error.validator, error.instance
    expected: Any = error.validator_value
    got = json_text(instance)
    if keyword == "required":
        # One error per missing field, each with the whole list as its
        # validator_value: its own field is the one its message names.
        named = [n for n in expected if error.message == f"{n!r} is a required property"]
        missing = named or [n for n in expected if isinstance(instance, dict) and n not in instance]
        return f"field {json_text(missing[0] if missing else expected)} is required"
    if keyword == "additionalProperties" and isinstance(instance, dict):
        allowed = (
            set(error.schema.get("properties", {})) if isinstance(error.schema, Mapping) else set()
        )
        extra = [json_text(k) for k in instance if k not in allowed]
        return f"field(s) {', '.join(extra)} are not allowed here"
    if keyword == "type":
        kinds = [str(k) for k in expected] if isinstance(expected, list) else [str(expected)]
        if instance is None:
            return f"expected {' or '.join(kinds)}, got null"  # not "null null"
        return (
            f"expected {' or '.join(kinds)}, got {_JSON_TYPES.get(type(instance), 'value')} {got}"
        )
    if keyword == "enum":
        return f"{got} is not allowed here; use one of {', '.join(json_text(v) for v in expected)}"
    if keyword == "const":
        return f"{got} is not allowed here; the only allowed value is {json_text(expected)}"
    if keyword == "pattern":
        return f"{got} does not match the pattern {json_text(expected)}"
    if keyword == "maximum" and expected == sys.float_info.max:
        # The schemas' bound on a number a float must hold (a duration, a delay).
        return f"{got} is too large: a number here must fit a float (at most {expected!r})"
    if keyword in _BOUNDS:
        return f"{got} is {_BOUNDS[keyword]} {json_text(expected)}"
    if keyword in ("minLength", "minItems", "minProperties"):
        return f"{got} is too short (at least {expected})"
    if keyword in ("maxLength", "maxItems", "maxProperties"):
        return f"{got} is too long (at most {expected})"
    # Other keywords: jsonschema's message, with the instance written as JSON.
    return error.message.replace(repr(instance), got, 1)


def _frozen_schema(value: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if value is None:
        return None
    frozen: Mapping[str, Any] = freeze(value)
    return frozen


# What payload schemas resolve a "$ref" in: nothing is fetched. jsonschema's
# default registry retrieves a URL, so a schema in a pipeline document (a
# WaitStage's input_schema) could make every send_input read any address.
# jsonschema adds the draft metaschemas to the registry it is given.
_NO_RETRIEVAL: Final = referencing.Registry()


def unresolved_ref(schema: Any) -> str | None:
    """The first ``$ref`` or ``$dynamicRef`` of ``schema`` that nothing resolves, or ``None``.

    A reference resolves within the schema (a pointer, an anchor, an embedded
    ``$id``) or to a draft's metaschema; stageflow fetches no schema from
    anywhere, so one naming another address does not.
    """
    resource = DRAFT202012.create_resource(schema)
    uri = resource.id() or ""
    registry = jsonschema_specifications.REGISTRY.combine(
        _NO_RETRIEVAL.with_resource(uri, resource)
    ).crawl()
    stack = [(registry.resolver(base_uri=uri), resource)]
    while stack:
        resolver, part = stack.pop()
        contents = part.contents
        if isinstance(contents, Mapping):
            for key in ("$ref", "$dynamicRef"):
                ref = contents.get(key)
                if isinstance(ref, str):
                    try:
                        resolver.lookup(ref)
                    except referencing.exceptions.Unresolvable:
                        return ref
        stack.extend((resolver.in_subresource(sub), sub) for sub in part.subresources())
    return None


def schema_problem(schema: Any) -> tuple[str, str] | None:
    """Why ``schema`` is no payload schema stageflow uses: ``(path in it, reason)``, or ``None``.

    It must be a valid draft 2020-12 JSON Schema whose every reference
    resolves without fetching anything (:func:`unresolved_ref`).
    """
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.absolute_path), (
            f"is not a valid JSON Schema (draft 2020-12): {exc.message}"
        )
    ref = unresolved_ref(schema)
    if ref is not None:
        return "", (
            f"has a reference nothing resolves ($ref {ref!r}): stageflow fetches no schema, "
            "so a reference must point inside the schema (such as '#/$defs/name')"
        )
    return None


def _check_schema(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    """Validator: a schema field holds a payload schema stageflow uses (or ``None``)."""
    if value is None:
        return
    problem = schema_problem(thaw(value))
    if problem is not None:
        where, why = problem
        raise DefinitionError(
            f"{type(instance).__name__}.{attribute.name}{where} {why}; fix the schema, or pass "
            "None to accept any value"
        )


@functools.lru_cache(maxsize=512)
def _regex(pattern: str) -> Any:
    """A compiled matcher of ``pattern`` (``jsonschema_rs``), or ``None`` if it cannot take it."""
    try:
        return jsonschema_rs.validator_for({"type": "string", "pattern": pattern})
    except ValueError:  # a pattern only Python's engine reads: matched with re
        return None


def _search(pattern: str, text: str) -> bool:
    """Whether ``pattern`` matches somewhere in ``text``, in time that a payload cannot blow up.

    Python's ``re`` backtracks: a schema's ``^(a+)+$`` against 40 ``a`` and a
    ``!`` takes hours, so one input sent to a waiting stage would block the
    event loop. ``jsonschema_rs``'s engine is linear (a bounded backtracker
    for look-arounds and back-references).
    """
    matcher = _regex(pattern)
    if matcher is None:
        return re.search(pattern, text) is not None
    return bool(matcher.is_valid(text))


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: Mapping[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: Mapping[str, Any], instance: Any, schema: Mapping[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    named = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    extras = [
        key
        for key in instance
        if key not in named and not any(_search(pattern, key) for pattern in patterns)
    ]
    if validator.is_type(additional, "object"):
        for key in extras:
            yield from validator.descend(instance[key], additional, path=key)
    elif additional is False and extras:
        # jsonschema's wording, which its callers (and ours) show.
        shown = ", ".join(repr(key) for key in sorted(extras))
        if patterns:
            regexes = ", ".join(repr(pattern) for pattern in sorted(patterns))
            verb = "does" if len(extras) == 1 else "do"
            yield jsonschema.ValidationError(
                f"{shown} {verb} not match any of the regexes: {regexes}"
            )
        else:
            verb = "was" if len(extras) == 1 else "were"
            yield jsonschema.ValidationError(
                f"Additional properties are not allowed ({shown} {verb} unexpected)"
            )


# Draft 2020-12, its three regular-expression keywords matched by _search:
# what payloads (inputs sent by anyone) are checked with.
_Validator = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    jsonschema.Draft202012Validator,
    {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    },
)


def compile_schema(schema: Mapping[str, Any]) -> jsonschema.protocols.Validator:
    """Build a draft 2020-12 validator for a (possibly frozen) schema.

    Its ``pattern``, ``patternProperties`` and ``additionalProperties``
    match regular expressions in linear time (:func:`_search`).
    """
    validator: jsonschema.protocols.Validator = _Validator(thaw(schema), registry=_NO_RETRIEVAL)
    return validator


JSONLOGIC_FORMAT: Final = "jsonlogic"
"""The ``format`` of a config property that holds a JsonLogic rule (``{"format":
"jsonlogic"}`` in a stage's config schema): the loader checks the rule as it
checks a condition's. JSON Schema validators ignore a format they do not know."""

ARGUMENT_FORMAT: Final = "argument"
"""The ``format`` of a config string that names one of the node's arguments
(``{"type": "string", "format": "argument"}``, or an array's ``items`` so):
the loader refuses a name the node's ``arguments`` does not map, which would
fail every run that reaches the node. JSON Schema validators ignore it."""

TEMPLATE_FORMAT: Final = "template"
"""The ``format`` of a config string that is a ``builtins.template`` text
(``stageflow._templates``): the loader refuses a placeholder whose first name
the node's ``arguments`` does not map, which would fail every run that
reaches the node. JSON Schema validators ignore it."""

TIME_FORMAT: Final = "time-with-offset"
"""The ``format`` of a config string that is a date and time with a UTC offset
(``SleepStage``'s ``until``): the loader refuses one that its ``pattern`` lets
through but that is no time (February 30th, an offset of 25 hours, a time
before the year 1 in UTC; :func:`time_with_offset` says why), which would fail
every run that reaches the node. JSON Schema validators ignore it."""


def time_with_offset(text: str) -> datetime.datetime:
    """``text`` (ISO 8601, with a UTC offset) as an aware datetime.

    Raises:
        ValueError: ``text`` is no such time; the message says why.
    """
    try:
        when = datetime.datetime.fromisoformat(text)
        if when.tzinfo is None:
            raise ValueError("it has no UTC offset")
        when.astimezone(datetime.UTC)  # 0001-01-01T00:00:00+01:00 is before any UTC time
    except OverflowError as exc:
        raise ValueError(str(exc)) from None
    return when


MAX_DOCUMENT_ERRORS: Final = 1000
"""Most schema errors a document is explained with: each costs a walk and an
object, so one broken in a million places (a list of a million bad items) is
refused by its first thousand, in a second, not by all of them in minutes."""


class DocumentSchema:
    """One of stageflow's own schemas: a fast yes, and a full explanation of a no.

    ``jsonschema-rs`` (compiled, about a hundred times faster here) decides
    whether a document is valid; only when it is not does ``jsonschema`` walk
    it again for the errors, whose messages and locations stageflow explains.
    For plain JSON (what ``json.loads`` gives) the result is ``jsonschema``'s;
    the fast check also takes a tuple for an array. A schema ``jsonschema-rs``
    cannot build (a ``$ref`` to another draft's metaschema, which it does
    not hold) is checked by ``jsonschema`` alone.
    """

    __slots__ = ("_fast", "_full")

    def __init__(self, schema: Mapping[str, Any]) -> None:
        plain = thaw(schema)
        # Payloads reach it (a stage's arguments): regexes in linear time.
        self._full: jsonschema.protocols.Validator = _Validator(plain, registry=_NO_RETRIEVAL)
        self._fast: jsonschema_rs.Validator | None
        try:
            self._fast = jsonschema_rs.Draft202012Validator(plain)
        except jsonschema_rs.ValidationError:
            self._fast = None

    def iter_errors(self, instance: Any) -> Iterator[jsonschema.ValidationError]:
        """The validation errors of ``instance`` (none at all when it is valid).

        At most :data:`MAX_DOCUMENT_ERRORS` of them, the first ones found.
        """
        try:
            if self._fast is not None and self._fast.is_valid(instance):
                return iter(())
        except (TypeError, ValueError, OverflowError):
            pass  # not plain JSON for the fast check (tuples, huge ints): the full one decides
        return itertools.islice(self._full.iter_errors(instance), MAX_DOCUMENT_ERRORS)


@attrs.frozen
class InputSpec:
    """An external input a stage may wait for.

    Attributes:
        type: the input type, as passed to ``session.send_input(type, ...)``.
        schema: JSON Schema of the payload, or ``None`` for any JSON value.
        description: what the input is, for people and catalogues.
    """

    type: str = attrs.field(validator=_check_input_type)
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

    Raises:
        DefinitionError: ``type`` is empty, not a string, or an engine event type.
    """

    type: str = attrs.field(validator=_check_event_type)
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
    allowed_inputs: tuple[InputSpec, ...] = attrs.field(
        default=(),
        converter=tuple,
        validator=each_instance(InputSpec, "allowed_inputs=[stageflow.InputSpec('approval')]"),
    )
    allowed_events: tuple[EventSpec, ...] = attrs.field(
        default=(),
        converter=tuple,
        validator=each_instance(EventSpec, "allowed_events=[stageflow.EventSpec('order_priced')]"),
    )
    retry: RetryPolicy | None = attrs.field(
        default=None,
        validator=one_instance(RetryPolicy, "stageflow.RetryPolicy(...)", optional=True),
    )
    timeout: float | None = attrs.field(
        default=None, validator=seconds_check(zero=False, optional=True)
    )
    input_from_config: str | None = attrs.field(
        default=None,
        validator=one_instance(str, "the name of a config key (a string)", optional=True),
    )
