"""JsonLogic rules compiled once into closures, for rules evaluated many times.

A condition's rule is fixed when its pipeline loads, yet :func:`stageflow.jsonlogic.apply`
walks it again on every evaluation: it looks up the operator, checks the
argument count and dispatches on the type of every sub-rule. :func:`compile_rule`
does that walk once and returns a function of the data only.

Contract: ``compile_rule(rule)(data)`` returns what ``apply(rule, data)``
returns and raises what it raises, with the same message, at evaluation time
(an unknown operator, a wrong argument count or a rule nested too deeply is
compiled into a function that raises, so a branch that is never taken never
fails, as with ``apply``). The common operators (``var`` with a path, the
comparisons, ``!``, ``!!``, ``and``, ``or``, ``if``) become closures over
their compiled arguments; every other operator is called as ``apply`` calls it.

The rule is read once, when compiled: it must not change afterwards (a loaded
pipeline's rules are frozen and never do).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

from stageflow.jsonlogic import (
    BETWEEN_OPS,
    BINARY_OPS,
    MAX_DEPTH,
    OPERATOR_TABLE,
    PLAIN_TYPES,
    UNARY_OPS,
    compare_values,
    counting_steps,
    finite_values,
    has_loop,
    lookup_path,
    step_into,
    too_deep_error,
    truthy,
    unknown_operator_error,
)

__all__ = ["compile_condition", "compile_rule"]

Compiled = Callable[[Any], Any]
"""A compiled (sub-)rule: a function of the data."""

# Operators whose result is always a bool.
_BOOLEAN: Final = frozenset({"==", "===", "!=", "!==", ">", ">=", "<", "<=", "in", "!", "!!"})
# Values a rule evaluates to as they are (arrays are evaluated item by item
# into a new list, and one-key objects are operations).
_CONSTANTS: Final = frozenset({str, int, float, bool, type(None)})


def compile_rule(rule: Any) -> Compiled:
    """Compile ``rule``: the result evaluates it against data as ``apply`` does."""
    evaluate = _with_steps(rule, _compile(rule, 0))

    def apply_compiled(data: Any = None) -> Any:
        result = evaluate(data)
        kind = type(result)
        if kind is float:
            return result + 0.0 if math.isfinite(result) else None  # as apply() returns it
        return finite_values(result) if kind is list else result

    return apply_compiled


def compile_condition(rule: Any) -> Callable[[Any], bool]:
    """Compile ``rule`` as a condition: the result is ``truthy(apply(rule, data))``."""
    evaluate = _with_steps(rule, _compile(rule, 0))
    if _is_mapping(rule) and len(rule) == 1 and next(iter(rule)) in _BOOLEAN:
        return evaluate  # a bool whenever it returns

    def test(data: Any) -> bool:
        result = evaluate(data)
        if type(result) is float:
            # apply() returns None for NaN and the infinities: false as a condition.
            return result != 0.0 and math.isfinite(result)
        return truthy(result)

    return test


def _with_steps(rule: Any, evaluate: Compiled) -> Compiled:
    """``evaluate`` as one evaluation, its loops sharing :data:`~stageflow.jsonlogic.MAX_STEPS`.

    Only a rule with a loop (``map``, ``reduce``, ...) counts steps; any other
    is left as it is, without the cost of setting the count.
    """
    if not has_loop(rule):
        return evaluate
    return lambda data: counting_steps(evaluate, data)


def _is_mapping(rule: Any) -> bool:
    """Whether ``jsonlogic._eval`` takes ``rule`` for an object."""
    kind = type(rule)
    return (
        kind is dict
        or kind is MappingProxyType
        or (kind not in PLAIN_TYPES and isinstance(rule, Mapping))
    )


def _compile(rule: Any, depth: int) -> Compiled:
    """What ``jsonlogic._eval(rule, data, depth)`` does, as a function of ``data``."""
    if _is_mapping(rule):
        if len(rule) != 1:
            return _constant(rule)
        if depth >= MAX_DEPTH:
            return _failing(too_deep_error)
        (name,) = rule
        op = OPERATOR_TABLE.get(name)
        if op is None:
            return _failing(lambda: unknown_operator_error(name))
        raw = rule[name]
        inner = depth + 1
        compiled = _special(name, raw, inner)
        if compiled is not None:
            return compiled

        def call(data: Any) -> Any:
            return op(raw, data, inner)

        return call
    if type(rule) is list or type(rule) is tuple:
        if depth >= MAX_DEPTH:
            return _failing(too_deep_error)
        items = [_compile(item, depth + 1) for item in rule]
        return lambda data: [item(data) for item in items]
    return _constant(rule)


def _constant(value: Any) -> Compiled:
    return lambda data: value


def _failing(error: Callable[[], Exception]) -> Compiled:
    def fail(data: Any) -> Any:
        raise error()

    return fail


def _arguments(raw: Any) -> Sequence[Any]:
    """The argument list of an operator, as ``jsonlogic._args`` reads it."""
    return raw if type(raw) is list or type(raw) is tuple else (raw,)


def _special(name: str, raw: Any, depth: int) -> Compiled | None:
    """A closure for a common operator with well-formed arguments, else ``None``.

    ``depth`` is the depth the operator evaluates its arguments at. ``None``
    leaves the operator (and any error about its arguments) to ``OPERATOR_TABLE``.
    """
    if name == "var":
        if type(raw) is not str:
            return None
        if raw and "." not in raw:
            return lambda data: step_into(data, raw, None)
        return lambda data: lookup_path(data, raw, None)
    binary = BINARY_OPS.get(name)
    if binary is not None:
        return _binary(binary, raw, depth)
    cmp = BETWEEN_OPS.get(name)
    if cmp is not None:
        return _between(cmp, raw, depth)
    unary = UNARY_OPS.get(name)
    if unary is not None:
        if type(raw) is list or type(raw) is tuple:
            if len(raw) != 1:
                return None
            raw = raw[0]
        argument = _compile(raw, depth)
        if name == "!!":
            return lambda data: truthy(argument(data))
        if name == "!":
            return lambda data: not truthy(argument(data))
        return argument  # log
    if name == "and" or name == "or":
        return _logical(name == "or", [_compile(a, depth) for a in _arguments(raw)])
    if name == "if" or name == "?:":
        return _if([_compile(a, depth) for a in _arguments(raw)])
    return None


def _binary(fn: Callable[[Any, Any], Any], raw: Any, depth: int) -> Compiled | None:
    if not (type(raw) is list or type(raw) is tuple) or len(raw) != 2:
        return None
    left, right = raw
    if type(right) in _CONSTANTS:  # {"==": [{"var": "x"}, 1]}: the usual shape
        key = _plain_var(left, depth)
        if key is not None:
            return lambda data: fn(
                data.get(key) if type(data) is dict else step_into(data, key, None), right
            )
        first = _compile(left, depth)
        return lambda data: fn(first(data), right)
    first, second = _compile(left, depth), _compile(right, depth)
    return lambda data: fn(first(data), second(data))


def _plain_var(rule: Any, depth: int) -> str | None:
    """The key of a ``{"var": "key"}`` (no dots) evaluated at ``depth``, else ``None``."""
    if depth >= MAX_DEPTH or not _is_mapping(rule) or len(rule) != 1 or "var" not in rule:
        return None
    key = rule["var"]
    return key if type(key) is str and key and "." not in key else None


def _between(cmp: Callable[[Any, Any], bool], raw: Any, depth: int) -> Compiled | None:
    if not (type(raw) is list or type(raw) is tuple) or not 2 <= len(raw) <= 3:
        return None
    first, second = _compile(raw[0], depth), _compile(raw[1], depth)
    if len(raw) == 2:
        return lambda data: compare_values(first(data), second(data), cmp)
    third = _compile(raw[2], depth)

    def between(data: Any) -> bool:
        a, b, c = first(data), second(data), third(data)  # all three, as apply does
        return compare_values(a, b, cmp) and compare_values(b, c, cmp)

    return between


def _logical(stop_when: bool, arguments: list[Compiled]) -> Compiled:
    def logical(data: Any) -> Any:
        value = None  # JavaScript: undefined, for no arguments
        for argument in arguments:
            value = argument(data)
            if truthy(value) is stop_when:
                return value
        return value

    return logical


def _if(arguments: list[Compiled]) -> Compiled:
    count = len(arguments)

    def choose(data: Any) -> Any:
        i = 0
        while i < count - 1:
            if truthy(arguments[i](data)):
                return arguments[i + 1](data)
            i += 2
        return arguments[i](data) if i < count else None

    return choose
