"""Built-in stages that check, fail and log: assert, fail, log. None returns outputs."""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from stageflow import jsonlogic
from stageflow._errors import JsonLogicError
from stageflow._json import copy_json
from stageflow._specs import JSONLOGIC_FORMAT, StageSpec
from stageflow._stages import BaseStage, StageContext
from stageflow.builtins._common import arguments, config_error
from stageflow.builtins._errors import AssertionFailedError, injected_failure_class
from stageflow.builtins._values import no_arguments

__all__ = ["LOG_LEVELS", "AssertStage", "FailStage", "LogStage"]

_NO_OUTPUTS: Final = {"type": "object", "properties": {}, "additionalProperties": False}

# The end is "(?![\s\S])", not "$": Python's re (which checks patterns at load)
# lets "$" match before a final newline, and a YAML block scalar ends with one;
# a class named "RateLimited\n" would match no error edge naming RateLimited.
_IDENTIFIER: Final = r"^[A-Za-z_][A-Za-z0-9_]{0,99}(?![\s\S])"

LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
"""The levels ``builtins.log`` writes at."""


def _rule_names(rule: Any) -> list[str]:
    """The first segment of every ``var`` name a rule reads from its data, in order, once.

    The rule a loop operator (``map``, ``some``, ``reduce``, ...) applies to
    each item reads the item (``current`` and ``accumulator`` for ``reduce``),
    not the data: its names are no arguments, and are left out.
    """
    # A queue and a set: a failing check with a rule of 100,000 parts took
    # seconds to name what it read, with a list for both.
    names: dict[str, None] = {}
    todo = collections.deque([rule])
    while todo:
        part = todo.popleft()
        if isinstance(part, Mapping):
            if len(part) != 1:
                continue  # an object of several keys is a literal: nothing in it is read
            [(name, args)] = part.items()
            if name == "var":
                ref = args[0] if isinstance(args, list | tuple) and args else args
                if isinstance(ref, str) and ref:
                    names.setdefault(ref.split(".")[0])
            elif name in jsonlogic.LOOPS and isinstance(args, list | tuple):
                # The array and reduce's initial value read the data; args[1] is per item.
                todo.extend(arg for i, arg in enumerate(args) if i != 1)
                continue
            todo.append(args)
        elif isinstance(part, list | tuple):
            todo.extend(part)
    return list(names)


class AssertStage(BaseStage):
    """``builtins.assert``: fail unless a JsonLogic rule over the arguments is true.

    Unlike a condition node's rule, which reads the whole context, this rule
    sees only the node's **arguments**, as every stage does: ``config.rule``
    is evaluated with :func:`stageflow.jsonlogic.apply` against an object of
    the node's arguments (``{"var": "total"}`` reads the argument ``total``,
    mapped from a context path with ``"arguments": {"total": "order.total"}``;
    an argument whose path holds nothing is absent, so ``var`` gives ``null``
    and ``missing`` lists it). When the result is not truthy the stage
    raises :class:`AssertionFailedError` carrying the rule, the argument
    values and ``config.message``; when the rule reads a name that is not
    among the arguments the stage got, the message says so (not for what
    the rule of a loop such as ``some`` or ``reduce`` reads: it reads each
    item). It returns no outputs.
    """

    spec: ClassVar[StageSpec] = StageSpec(
        description="Fail with AssertionFailedError unless a JsonLogic rule is true.",
        arguments={
            "type": "object",
            "properties": {},
            "additionalProperties": {
                "description": 'Any value; the rule reads it as `{"var": "<name>"}`.'
            },
        },
        config={
            "type": "object",
            "properties": {
                "rule": {
                    "description": "The JsonLogic rule that must be truthy.",
                    "format": JSONLOGIC_FORMAT,
                },
                "message": {
                    "description": "What the rule checks, put at the start of the error message.",
                    "type": "string",
                    "minLength": 1,
                },
            },
            "required": ["rule"],
            "additionalProperties": False,
        },
        outputs=_NO_OUTPUTS,
    )

    async def run(self, ctx: StageContext) -> None:
        """Return nothing when the rule holds; raise otherwise."""
        values = dict(arguments(ctx, self.spec))
        rule = ctx.config["rule"]
        try:
            holds = jsonlogic.truthy(jsonlogic.apply(rule, values))
        except JsonLogicError as exc:
            raise config_error(
                ctx, f"config 'rule' cannot be evaluated: {exc}; fix the rule"
            ) from exc
        if not holds:
            unmapped = [n for n in _rule_names(rule) if n not in values]
            raise AssertionFailedError(
                rule=rule,
                values=copy_json(values),
                reason=ctx.config.get("message"),
                unmapped=unmapped,
                node_id=ctx.node_id,
                stage=ctx.stage,
                attempt=ctx.attempt,
            )


class FailStage(BaseStage):
    """``builtins.fail``: raise an error on purpose, to exercise error handling.

    It always raises :class:`InjectedFailureError` with ``config.message``.
    With ``config.error_type``, the raised error's class is a subclass of
    :class:`InjectedFailureError` with exactly that name, so error
    descriptions (``{"type": "RateLimited", ...}``) and anything that matches
    errors by type name see it as that type.
    """

    spec: ClassVar[StageSpec] = StageSpec(
        description="Raise InjectedFailureError (or a subclass named by `error_type`).",
        arguments=no_arguments(),
        config={
            "type": "object",
            "properties": {
                "message": {
                    "description": "The error message.",
                    "type": "string",
                    "minLength": 1,
                },
                "error_type": {
                    "description": "Class name of the raised error: ASCII letters, digits "
                    "and `_`, not starting with a digit, at most 100 characters.",
                    "type": "string",
                    "pattern": _IDENTIFIER,
                    "default": "InjectedFailureError",
                },
            },
            "required": ["message"],
            "additionalProperties": False,
        },
        outputs=_NO_OUTPUTS,
    )

    async def run(self, ctx: StageContext) -> None:
        """Raise the configured error."""
        cls = injected_failure_class(ctx.config.get("error_type", "InjectedFailureError"))
        raise cls(ctx.config["message"], node_id=ctx.node_id, stage=ctx.stage, attempt=ctx.attempt)


class LogStage(BaseStage):
    """``builtins.log``: write one structured log line with the arguments.

    The line goes through the stage's logger (``ctx.log``, bound to the
    session, node and attempt) at ``config.level``, with ``config.event`` as
    the event name and the argument values under the single key
    ``arguments`` (one key, so argument names can never collide with
    ``event``, ``level`` or the bound keys). It returns no outputs.
    """

    spec: ClassVar[StageSpec] = StageSpec(
        description="Write a structured log line with the arguments.",
        arguments={
            "type": "object",
            "properties": {},
            "additionalProperties": {"description": "Any value to include in the log line."},
        },
        config={
            "type": "object",
            "properties": {
                "event": {
                    "description": "The log event name.",
                    "type": "string",
                    "minLength": 1,
                    "default": "builtins.log",
                },
                "level": {
                    "description": "The log level.",
                    "enum": list(LOG_LEVELS),
                    "default": "info",
                },
            },
            "additionalProperties": False,
        },
        outputs=_NO_OUTPUTS,
    )

    async def run(self, ctx: StageContext) -> None:
        """Log the arguments and return nothing."""
        values: dict[str, Any] = copy_json(arguments(ctx, self.spec))
        event: str = ctx.config.get("event", "builtins.log")
        log = ctx.log
        methods = {
            "debug": log.debug,
            "info": log.info,
            "warning": log.warning,
            "error": log.error,
            "critical": log.critical,
        }
        methods[ctx.config.get("level", "info")](event, arguments=values)
