"""The syntax of ``builtins.template`` text: placeholders and literal braces.

Parsing only, no values: the bottom layer, so that the loader checks a
template's placeholders against its node's arguments (as it checks a
JsonLogic rule, ``stageflow.jsonlogic``), and the stage fills it in.

- ``{name}`` is a placeholder; ``{name.key.key}`` walks into objects by key.
  Names and keys are ASCII letters, digits, ``_`` and ``-``.
- ``{{`` and ``}}`` are a literal ``{`` and ``}``.
- Nothing else: no ``[index]``, no ``!conversion``, no ``:format`` spec.
"""

from __future__ import annotations

import functools
import re
from typing import Final

__all__ = ["TEMPLATE_PATTERN", "MalformedTemplateError", "TemplatePart", "parse_template"]

_NAME: Final = r"[A-Za-z0-9_-]+"
_FIELD: Final = rf"\{{({_NAME}(?:\.{_NAME})*)\}}"

TEMPLATE_PATTERN: Final = rf"^(?:[^{{}}]|\{{\{{|\}}\}}|{_FIELD})*$"
"""The JSON Schema ``pattern`` a template must match (checked when a pipeline loads).

Every alternative starts differently, so matching is linear in the length
of the template (no catastrophic backtracking).
"""

_TOKEN: Final = re.compile(rf"[^{{}}]+|\{{\{{|\}}\}}|{_FIELD}")

TemplatePart = str | tuple[str, ...]
"""A literal string, or a placeholder as its keys (``("user", "name")``)."""


class MalformedTemplateError(ValueError):
    """A template does not match :data:`TEMPLATE_PATTERN`.

    Attributes:
        position: the character where it stops being a template.
        text: up to 20 characters from there.
    """

    def __init__(self, position: int, text: str) -> None:
        self.position = position
        self.text = text
        super().__init__(position, text)


# Templates up to this long are parsed once and kept (a node runs its template
# over and over); a longer one is parsed each time, in time linear in its
# length, so that documents loaded one after another (a service validating
# what it is sent) cannot pin 512 templates of megabytes each in the cache.
_CACHED_LENGTH: Final = 4096


def parse_template(template: str) -> tuple[TemplatePart, ...]:
    """Split a template into literal strings and placeholders (tuples of keys).

    Raises:
        MalformedTemplateError: ``template`` is not one.
    """
    if len(template) <= _CACHED_LENGTH:
        return _parse_cached(template)
    return _parse(template)


@functools.lru_cache(maxsize=512)
def _parse_cached(template: str) -> tuple[TemplatePart, ...]:
    return _parse(template)


def _parse(template: str) -> tuple[TemplatePart, ...]:
    parts: list[TemplatePart] = []
    literal: list[str] = []
    position = 0
    while position < len(template):
        match = _TOKEN.match(template, position)
        if match is None:
            raise MalformedTemplateError(position, template[position : position + 20])
        token = match.group()
        if match.group(1) is not None:
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(tuple(match.group(1).split(".")))
        elif token in ("{{", "}}"):
            literal.append(token[0])
        else:
            literal.append(token)
        position = match.end()
    if literal:
        parts.append("".join(literal))
    return tuple(parts)
