"""``builtins.template``: a safe string template over the stage's arguments.

The syntax is deliberately tiny, so that a template is data and never code:

- ``{name}`` inserts the argument ``name``; ``{name.key.key}`` walks into
  objects by key. Names and keys are ASCII letters, digits, ``_`` and ``-``.
- ``{{`` and ``}}`` are a literal ``{`` and ``}``.
- Nothing else: no ``[index]``, no ``!conversion``, no ``:format`` spec, no
  attribute access. A dotted step is a dict key lookup and nothing more, so
  ``{x.__class__}`` looks for the *key* ``"__class__"`` and never reaches
  a Python attribute.

A string is inserted as is; any other JSON value as compact JSON (``true``,
``null``, ``[1,2]``, ``{"a":1}``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from stageflow._errors import shown_scalar
from stageflow._graph import listing
from stageflow._specs import TEMPLATE_FORMAT, StageSpec
from stageflow._stages import BaseStage, StageContext
from stageflow._templates import TEMPLATE_PATTERN, MalformedTemplateError, parse_template
from stageflow.builtins._common import (
    MAX_TEXT,
    arguments,
    config_error,
    describe_type,
    json_type,
    text_too_long,
)
from stageflow.builtins._errors import TemplateError, json_head
from stageflow.builtins._values import outputs

__all__ = ["TEMPLATE_PATTERN", "TemplateStage", "render"]


def _text(ctx: StageContext, value: Any, room: int) -> str:
    """``value`` as template text: a string as is, anything else as compact JSON.

    Raises:
        BuiltinStageError: the text is longer than ``room`` characters.
    """
    if isinstance(value, str):
        text = value
    elif isinstance(value, list | dict):
        # Refused before one holding a long string many times over is written whole.
        text = json_head(value, room)
    else:
        text = json.dumps(value)
    if len(text) > room:
        raise text_too_long(ctx, "the filled-in template")
    return text


def render(ctx: StageContext, template: str, values: Mapping[str, Any]) -> str:
    """Fill ``template`` from ``values`` for the stage running in ``ctx``.

    Raises:
        BuiltinConfigError: the template is malformed.
        TemplateError: a placeholder names an argument or key that is not there,
            or steps into a value that is not an object.
        BuiltinStageError: the text would be longer than :data:`MAX_TEXT`.
    """
    try:
        parts = parse_template(template)
    except MalformedTemplateError as exc:
        raise config_error(
            ctx,
            f"config 'template' is malformed at character {exc.position} ({exc.text!r}); "
            "placeholders are {name} or {name.key}, and a literal brace is written {{ or }}",
        ) from None
    out: list[str] = []
    room = MAX_TEXT
    for part in parts:
        text = _text(ctx, part if isinstance(part, str) else _lookup(ctx, part, values), room)
        out.append(text)
        room -= len(text)
    return "".join(out)


def _lookup(ctx: StageContext, part: tuple[str, ...], values: Mapping[str, Any]) -> Any:
    """The value a placeholder (its name and keys) stands for."""
    placeholder = ".".join(part)
    if part[0] not in values:
        raise _missing(
            ctx,
            placeholder,
            f"no argument {part[0]!r} has a value (known: {listing(values)}); "
            f"map {part[0]!r} in the node's "
            "'arguments' to a context path that holds a value, or fix the template",
        )
    value = values[part[0]]
    for depth, key in enumerate(part[1:], start=1):
        where = ".".join(part[:depth])
        if not isinstance(value, Mapping):
            raise _missing(
                ctx,
                placeholder,
                f"{where!r} is {describe_type(json_type(value))}, not an object; a template "
                "looks up object keys only (no attributes, no indexes)",
            )
        if key not in value:
            raise _missing(
                ctx,
                placeholder,
                f"the object at {where!r} has no key {key!r} (it has: "
                f"{listing(map(shown_scalar, value))}); fix the template or the data",
            )
        value = value[key]
    return value


def _missing(ctx: StageContext, placeholder: str, problem: str) -> TemplateError:
    return TemplateError(
        f"template placeholder {{{placeholder}}}: {problem}",
        placeholder=placeholder,
        node_id=ctx.node_id,
        stage=ctx.stage,
        attempt=ctx.attempt,
    )


class TemplateStage(BaseStage):
    """``builtins.template``: fill a string template from the arguments.

    ``{name}`` inserts the argument ``name``, ``{name.key.key}`` a key of an
    object argument (names and keys are ASCII letters, digits, ``_`` and
    ``-``); ``{{`` and ``}}`` are literal braces. There is no indexing, attribute
    access, conversion or format spec: a dotted step is an object key lookup
    and nothing else (``{x.__class__}`` looks for the key ``"__class__"``),
    so a template cannot reach anything but the JSON values it is given. Any
    other use of a brace, or a placeholder naming an argument the node does
    not map, is a load-time problem. A placeholder whose argument's path
    holds nothing when the node runs, that names a missing key, or that steps
    into a value that is not an object, is a :class:`TemplateError` naming
    it. Strings are inserted as is, other values as compact JSON (``true``,
    ``null``, ``[1,2]``). Filled-in text longer than :data:`MAX_TEXT`
    characters is refused.
    """

    spec: ClassVar[StageSpec] = StageSpec(
        description="Fill a safe string template from the arguments.",
        arguments={
            "type": "object",
            "properties": {},
            "additionalProperties": {
                "description": "Any value; the template inserts it as `{<name>}`."
            },
        },
        config={
            "type": "object",
            "properties": {
                "template": {
                    "description": "Text with `{name}` / `{name.key}` placeholders (names "
                    "and keys of ASCII letters, digits, `_` and `-`); `{{` and `}}` are literal "
                    "braces.",
                    "type": "string",
                    "pattern": TEMPLATE_PATTERN,
                    "format": TEMPLATE_FORMAT,
                }
            },
            "required": ["template"],
            "additionalProperties": False,
        },
        outputs=outputs(value={"description": "The filled-in text.", "type": "string"}),
    )

    async def run(self, ctx: StageContext) -> Mapping[str, Any]:
        """Return ``{"value": <the filled-in template>}``."""
        return {"value": render(ctx, ctx.config["template"], arguments(ctx, self.spec))}
