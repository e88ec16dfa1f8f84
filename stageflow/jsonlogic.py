"""A safe, dependency-free JsonLogic evaluator (jsonlogic.com "classic" semantics).

A JsonLogic rule is plain JSON. An object with exactly one key is an operator
applied to its value (the arguments; a value that is not an array is a single
argument). An array is evaluated element by element. Anything else, including
objects with zero or several keys, is a literal. :func:`apply` evaluates a rule
against ``data`` the way json-logic-js does, with JavaScript truthiness (``[]`` is
falsy too), loose ``==`` and ``Number()`` coercion. It passes the official
jsonlogic.com test suite.

Operators (:data:`OPERATORS`):

- data: ``var`` (dotted path; list indexes as segments; ``""`` is the whole
  data; optional default), ``missing``, ``missing_some``
- logic: ``if`` (alias ``?:``; chained if/then/elif/then/else), ``and``, ``or``,
  ``!``, ``!!``
- comparison: ``==``, ``===``, ``!=``, ``!==``, ``>``, ``>=``, ``<`` and ``<=``
  (the last two also take three arguments: "between")
- arithmetic: ``+``, ``-``, ``*``, ``/``, ``%``, ``min``, ``max``
- strings and arrays: ``cat``, ``substr``, ``in``, ``merge``
- arrays: ``map``, ``filter``, ``reduce`` (``current``/``accumulator``),
  ``all``, ``some``, ``none``
- ``log``: returns its argument unchanged. It prints nothing.

:func:`truthy` applies JsonLogic truthiness to a result, for conditions.

Safety: a rule is data, never code. Evaluation reads ``data`` only by mapping
key lookup and list/tuple indexing. It never reads attributes, calls methods of
the data or uses ``eval``, so the json-logic-js ``method`` operator is not
supported. An unknown operator raises :class:`~stageflow._errors.JsonLogicError`.
So does a rule nested more than :data:`MAX_DEPTH` levels deep, checked during
evaluation so that hostile input can never exhaust Python's stack. Evaluation has
no side effects and mutates neither the rule nor the data.

Decisions where JavaScript has no JSON answer, or JSON has no JavaScript one:

- Division and ``%`` by zero, and non-numeric operands such as
  ``{"+": ["abc"]}``, give ``NaN`` or an infinity as in JavaScript, and compare
  and convert as there (``{">": [{"/": [1, 0]}, 5]}`` is true). Only the result
  that :func:`apply` returns is made JSON: a ``NaN`` or infinity in it, at the
  top or inside lists, becomes ``None``, as ``JSON.stringify`` writes it.
- Every arithmetic operator coerces its operands like JavaScript ``Number()``
  (json-logic-js's ``+`` and ``*`` use ``parseFloat``). The result is an ``int``
  when the operands are integral and so is the exact result.
- Arithmetic is bounded: an integer operand or result of more than
  :data:`MAX_EXACT_BITS` bits (past the float range, about ``1.8e308``)
  overflows to an infinity, as json-logic-js overflows to ``Infinity``, so a
  ``reduce`` that squares its accumulator forty times ends at once instead of
  building a 2^40-bit integer. Below that, integers stay exact.
- ``cat`` and ``merge`` may build at most :data:`MAX_SIZE` characters or items;
  beyond it they raise ``JsonLogicError`` (a ``reduce`` that doubles a string or
  a list would otherwise take all memory). A list a rule holds more than once
  (a ``reduce`` whose step is ``[acc, acc]`` builds 2^n leaves in n lists) is
  compared, cleaned of NaN and written as text once, so those take the time of
  the lists; text made from a list is bounded by :data:`MAX_SIZE` too.
- An evaluation takes at most :data:`MAX_STEPS` steps, or raises
  ``JsonLogicError``. ``map``, ``filter``, ``reduce``, ``all``, ``some`` and
  ``none`` spend, for each item, one step plus one for every value of the rule
  they apply to it (operators, arrays and scalars, those of a branch not taken
  included). Inside them, ``cat`` and ``merge`` also spend one per character
  or item they build, and ``==``, ``===``, ``in``, ``missing`` and text made
  from a list one per item of the lists they go through (a long ``var`` path
  one per segment). Outside them nothing is counted: each part of the rule is
  evaluated once at most.
  Nested, such operators multiply: five ``some`` over 30-item lists inside each
  other evaluate 30^5 rules, and a ``reduce`` that appends to its accumulator
  copies it at every item. Without the bound, a rule of a few hundred
  characters froze the event loop for hours.
- ``var`` returns a stored ``null`` as ``None``. The default applies only when a
  key or index is absent. ``missing`` counts ``null`` and ``""`` as missing.
  Path segments select dict keys, list indexes and string characters (``0``,
  ``1``, ...), never properties such as ``length``.
- ``cat`` adds nothing for ``null``, as json-logic-js's ``join`` does.
- ``==``, ``===`` and ``in`` compare arrays and objects by value. JavaScript
  compares them by identity, which means nothing for JSON data.
- A fixed-arity operator given the wrong number of arguments raises
  ``JsonLogicError``, e.g. ``{">": [1]}``. The count is that of the rule's
  arguments, never of data, so :func:`check` finds it before evaluation.
- Non-JSON values are opaque objects: truthy, never equal to anything but
  themselves. ``tuple`` counts as an array and any ``Mapping`` as an object, so
  frozen rules and read-only views of data (such as a ``ChainMap``) work.
"""

from __future__ import annotations

import math
import operator
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar, Token
from types import MappingProxyType
from typing import Any, Final, TypeVar

from stageflow._errors import JsonLogicError

__all__ = [
    "MAX_DEPTH",
    "MAX_EXACT_BITS",
    "MAX_SIZE",
    "MAX_STEPS",
    "OPERATORS",
    "apply",
    "check",
    "is_rule",
    "truthy",
]

# Names below without an underscore but not in __all__ (the operator tables,
# compare_values, lookup_path, ...) are package-internal: the compiled
# evaluator (stageflow/_jsonlogic_compiled.py) shares them. They are not part
# of the public API and may change in any release.

MAX_DEPTH: Final = 100
"""How many levels of operators and arrays a rule (or a compared value) may nest."""

_Op = Callable[[Any, Any, int], Any]
_Sized = TypeVar("_Sized", str, list[Any])
_T = TypeVar("_T")
_MISSING: Final = object()
_INF: Final = math.inf
_NAN: Final = math.nan
_MANY: Final = sys.maxsize
_LONG_PATH: Final = 256  # a longer 'var' path spends a step per dot (see MAX_STEPS)
_BIG_INT: Final = 10**21  # JavaScript prints numbers from here on in exponent form
MAX_EXACT_BITS: Final = 1024
"""Largest integer an arithmetic result keeps exactly, in bits (the range of a float);
beyond it the result overflows to an infinity, as in JavaScript."""
MAX_SIZE: Final = 1_000_000
"""Most characters a ``cat`` and items a ``merge`` may build."""
MAX_STEPS: Final = 10_000_000
"""Most steps one evaluation of a rule may take (see the module's documentation),
a few seconds at most: one pass over a list of a million items fits, loops
nested in loops over it do not."""
# The evaluation running in this context: [steps it may still take, loop
# operators open], set by apply() and the compiled evaluator (counting_steps()).
_STEPS: Final[ContextVar[list[int] | None]] = ContextVar("stageflow_jsonlogic_steps", default=None)
_JS_SPACE: Final = (
    " \t\n\v\f\r\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)
_DECIMAL: Final = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_RADIX: Final = re.compile(r"0(?:[xX][0-9a-fA-F]+|[oO][0-7]+|[bB][01]+)")
PLAIN_TYPES: Final = frozenset({str, int, float, bool, type(None), list, tuple})
_FROZEN: Final = MappingProxyType  # how loaded pipelines store rules: keep it on the fast path
_SIMPLE: Final = frozenset({str, int, float, bool})
_NULL, _BOOL, _NUM, _STR, _ARR, _OBJ, _OTHER = range(7)
_KINDS: Final[dict[type, int]] = {
    type(None): _NULL,
    bool: _BOOL,
    int: _NUM,
    float: _NUM,
    str: _STR,
    list: _ARR,
    tuple: _ARR,
    dict: _OBJ,
}


def apply(rule: Any, data: Any = None) -> Any:
    """Evaluate a JsonLogic rule against data.

    Args:
        rule: the rule, as parsed JSON. Literals evaluate to themselves.
        data: the JSON value that ``var`` and ``missing`` read.

    Returns:
        The result, a JSON value (``NaN`` and infinities become ``None``). It may
        share containers with ``rule`` and ``data``: copy it before changing it.
        For a condition use :func:`truthy` on it, or evaluate ``{"!!": [rule]}``,
        which also counts an infinite result as true, as JavaScript does.

    Raises:
        JsonLogicError: the rule uses an unknown operator, gives an operator the
            wrong number of arguments, nests deeper than :data:`MAX_DEPTH`, or
            goes past a bound of evaluation: :data:`MAX_SIZE`, :data:`MAX_STEPS`.
    """
    token = _STEPS.set([MAX_STEPS, 0])
    try:
        result = _eval(rule, data, 0)
    finally:
        _STEPS.reset(token)
    return _json_result(result)


def _json_result(result: Any) -> Any:
    """What :func:`apply` returns for what evaluation gave: NaN and infinities as ``None``."""
    kind = type(result)
    if kind is float:
        return result + 0.0 if math.isfinite(result) else None  # + 0.0: no negative zero
    return finite_values(result) if kind is list else result


def apply_item(rule: Any, data: Any, cost: int) -> Any:
    """``apply(rule, data)`` as one item of a loop, such as ``builtins.filter``'s over its list.

    Inside :func:`counting_steps`, the items share one evaluation's
    :data:`MAX_STEPS`, as the items of a ``filter`` operator do: each spends
    ``cost`` (``1 + rule_size(rule)``, see the module's documentation) and
    what the loops and ``cat``/``merge`` inside the rule spend. A loop over
    many items thus ends within the steps of one evaluation, a few seconds,
    instead of taking them again for every item. Called outside
    :func:`counting_steps`, it is one evaluation on its own.
    """
    steps, token = _open_loop()
    try:
        steps[0] -= cost
        if steps[0] < 0:
            raise _too_many_steps()
        result = _eval(rule, data, 0)
    finally:
        _close_loop(steps, token)
    return _json_result(result)


def is_rule(value: Any) -> bool:
    """Tell whether ``apply`` treats ``value`` as an operator rather than a literal.

    As in JsonLogic, that is any object with exactly one key, whether or not the
    key names a supported operator (``apply`` rejects unknown ones).

    Args:
        value: any JSON value.

    Returns:
        ``True`` for a dict (or other mapping) with exactly one key.
    """
    return isinstance(value, Mapping) and len(value) == 1


def truthy(value: Any) -> bool:
    """Tell whether JsonLogic, like JavaScript, treats ``value`` as true.

    False are ``None``, ``False``, ``0``, ``0.0``, NaN, ``""`` and, unlike in
    JavaScript, empty arrays. Everything else is true, empty objects included.

    Args:
        value: any JSON value, typically what :func:`apply` returned.

    Returns:
        The truthiness that ``if``, ``and``, ``or``, ``!`` and ``filter`` use.
    """
    if value is True:
        return True
    if value is False or value is None:
        return False
    kind = type(value)
    if kind is int or kind is str or kind is list or kind is tuple:
        return bool(value)
    if kind is float:
        return bool(value == value and value != 0.0)  # NaN is falsy
    return True  # objects, even empty ones, are truthy


def _eval(rule: Any, data: Any, depth: int) -> Any:
    kind = type(rule)
    if kind is dict or kind is _FROZEN or (kind not in PLAIN_TYPES and isinstance(rule, Mapping)):
        if len(rule) != 1:
            return rule
        if depth >= MAX_DEPTH:
            raise too_deep_error()
        (name,) = rule
        op = OPERATOR_TABLE.get(name)
        if op is None:
            raise unknown_operator_error(name)
        return op(rule[name], data, depth + 1)
    if kind is list or kind is tuple:
        if depth >= MAX_DEPTH:
            raise too_deep_error()
        depth += 1
        return [_eval(item, data, depth) for item in rule]
    return rule


def too_deep_error() -> JsonLogicError:
    return JsonLogicError(
        f"JsonLogic rule is nested more than {MAX_DEPTH} levels deep (operators and array "
        "literals count as levels); flatten it, e.g. give one 'and', 'or' or 'if' several "
        "arguments instead of nesting them, or split it into several conditions"
    )


def counting_steps(evaluate: Callable[[Any], _T], data: Any) -> _T:
    """``evaluate(data)`` as one evaluation, whose loops share :data:`MAX_STEPS` steps."""
    token = _STEPS.set([MAX_STEPS, 0])
    try:
        return evaluate(data)
    finally:
        _STEPS.reset(token)


def _open_loop() -> tuple[list[int], Token[list[int] | None] | None]:
    """The running evaluation's steps, as a loop operator starts; see :func:`_close_loop`."""
    steps = _STEPS.get()
    token = None
    if steps is None:  # an operator called on its own, not through apply(): one evaluation
        steps = [MAX_STEPS, 0]
        token = _STEPS.set(steps)
    steps[1] += 1
    return steps, token


def _close_loop(steps: list[int], token: Token[list[int] | None] | None) -> None:
    steps[1] -= 1
    if token is not None:
        _STEPS.reset(token)


def _spend(count: int) -> None:
    """Take ``count`` steps of :data:`MAX_STEPS` inside a loop operator, or raise.

    Outside loops nothing is counted: each step of a rule is taken once at most.
    """
    steps = _STEPS.get()
    if steps is None or not steps[1]:
        return
    steps[0] -= count
    if steps[0] < 0:
        raise _too_many_steps()


def _too_many_steps() -> JsonLogicError:
    return JsonLogicError(
        f"JsonLogic rule took more than {MAX_STEPS:,} steps (jsonlogic.MAX_STEPS): "
        "'map', 'filter', 'reduce', 'all', 'some' or 'none' nested inside each other "
        "multiply their steps, and a 'cat' or 'merge' in a 'reduce' copies its "
        "accumulator at every item; a rule decides, it does not compute: loop over "
        "fewer items, do not nest the loops, or move that work into a stage"
    )


def rule_size(rule: Any) -> int:
    """How many values evaluating ``rule`` goes through: operators, arrays and scalars.

    An object that is no operator counts one (it is a literal, not looked into);
    so does an operator's argument list, as an array would. Counting stops past
    :data:`MAX_STEPS` (a rule built in Python may share its lists over and over).
    """
    size = 0
    todo = [rule]
    while todo and size <= MAX_STEPS:
        value = todo.pop()
        size += 1
        if type(value) is list or type(value) is tuple:
            todo.extend(value)
        elif _is_operation(value):
            todo.extend(value.values())
    return size


def _is_operation(value: Any) -> bool:
    """Whether :func:`_eval` applies ``value`` as an operator: an object of one key."""
    kind = type(value)
    if kind is dict or kind is _FROZEN or (kind not in PLAIN_TYPES and isinstance(value, Mapping)):
        return len(value) == 1
    return False


def _value_too_deep() -> JsonLogicError:
    return JsonLogicError(
        f"JsonLogic cannot compare or convert a value nested more than {MAX_DEPTH} levels "
        "deep; compare a part of it selected with 'var' instead"
    )


def unknown_operator_error(name: Any) -> JsonLogicError:
    hint = ""
    if name == "method":
        hint = " (json-logic-js's 'method' is deliberately unsupported: rules cannot call methods)"
    return JsonLogicError(
        f"unknown JsonLogic operator {name!r}{hint}; an object with exactly one key is "
        f"always an operator; supported operators: {', '.join(sorted(OPERATOR_TABLE))}"
    )


def _args(raw: Any, name: str) -> Sequence[Any]:
    args: Sequence[Any] = raw if type(raw) is list or type(raw) is tuple else (raw,)
    low, high = _ARITY.get(name, _ANY_COUNT)
    if low <= len(args) <= high:
        return args
    raise JsonLogicError(_arity_message(name, len(args)))


def _arity_message(name: str, got: int) -> str:
    """What :func:`apply` and :func:`check` say of ``got`` arguments to a fixed-arity operator."""
    low, high = _ARITY[name]
    count = f"{low}" if low == high else f"{low} to {high}"
    if high == _MANY:
        count = f"at least {low}"
    return (
        f"JsonLogic operator {name!r} takes {count} argument"
        f"{'' if count in ('1', 'at least 1') else 's'}, "
        f"got {got}; write it as {_USAGE[name]}"
    )


# --- conversions (JavaScript semantics) ---------------------------------------


def _kind(value: Any) -> int:
    kind = _KINDS.get(type(value))
    if kind is not None:
        return kind
    return _OBJ if isinstance(value, Mapping) else _OTHER


def _is_array(value: Any) -> bool:
    return type(value) is list or type(value) is tuple


def _to_number(value: Any) -> int | float:
    kind = type(value)
    if kind is int or kind is float:
        return value  # type: ignore[no-any-return]
    if kind is str:
        return _parse_number(value)
    if kind is bool:
        return 1 if value else 0
    if value is None:
        return 0
    if kind is list or kind is tuple:
        return _parse_number(_to_string(value))
    return _NAN


def _parse_number(text: str) -> int | float:
    text = text.strip(_JS_SPACE)
    if not text:
        return 0
    if _DECIMAL.fullmatch(text):
        if "." in text or "e" in text or "E" in text:
            return float(text)
        try:
            number = int(text)
        except ValueError:  # more digits than int() will parse
            return float(text)
        return -0.0 if number == 0 and text[0] == "-" else number  # JavaScript has -0
    if _RADIX.fullmatch(text):
        return int(text, 0)
    if text in ("Infinity", "+Infinity"):
        return _INF
    return -_INF if text == "-Infinity" else _NAN


def _to_int(value: Any) -> int:
    number = _to_number(value)
    if number != number:
        return 0
    if number in (_INF, -_INF):
        return _MANY if number > 0 else -_MANY
    return int(number)


def _to_string(value: Any, depth: int = 0, done: dict[int, str] | None = None) -> str:
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    if kind is int:
        if -_BIG_INT < value < _BIG_INT:
            return str(value)
        try:
            return _float_to_string(float(value))
        except OverflowError:
            return "Infinity" if value > 0 else "-Infinity"
    if kind is float:
        return _float_to_string(value)
    if kind is bool:
        return "true" if value else "false"
    if value is None:
        return "null"
    if kind is list or kind is tuple:
        if depth >= MAX_DEPTH:
            raise _value_too_deep()
        # A list met again (a rule can build [x, x] over and over: a value with
        # 2**n leaves in n lists) is written once; the text stays under MAX_SIZE.
        if done is None:
            done = {}
        text = done.get(id(value))
        if text is None:
            _spend(len(value))
            text = ",".join(
                "" if item is None else _to_string(item, depth + 1, done) for item in value
            )
            if len(text) > MAX_SIZE:
                raise JsonLogicError(
                    f"JsonLogic cannot write a list of over {MAX_SIZE:,} characters as text; "
                    "compare or join smaller parts of it"
                )
            done[id(value)] = text
        return text
    return "[object Object]"


def _float_to_string(number: float) -> str:
    """Format a float like JavaScript's ``Number.prototype.toString()``."""
    if number != number:
        return "NaN"
    if number in (_INF, -_INF):
        return "Infinity" if number > 0 else "-Infinity"
    if number.is_integer() and -(2**53) <= number <= 2**53:
        return str(int(number))
    text = repr(number)  # shortest round-trip digits, as JavaScript uses
    sign = ""
    if text[0] == "-":
        sign, text = "-", text[1:]
    mantissa, _, exponent = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    significant = digits.lstrip("0")
    point = len(whole) + int(exponent or 0) - (len(digits) - len(significant))
    digits = significant.rstrip("0")
    size = len(digits)
    if size <= point <= 21:
        body = digits + "0" * (point - size)
    elif 0 < point <= 21:
        body = f"{digits[:point]}.{digits[point:]}"
    elif -6 < point <= 0:
        body = "0." + "0" * -point + digits
    else:
        power = point - 1
        body = digits[0] + ("." + digits[1:] if size > 1 else "")
        body += f"e{'+' if power >= 0 else '-'}{abs(power)}"
    return sign + body


def _to_primitive(value: Any) -> Any:
    kind = _kind(value)
    if kind == _ARR:
        return _to_string(value)
    return "[object Object]" if kind >= _OBJ else value


def finite_values(
    values: list[Any], depth: int = 0, done: dict[int, list[Any]] | None = None
) -> list[Any]:
    """Return ``values`` with NaN and infinities (nested too) replaced by ``None``.

    A list met again is cleaned once (``done``): a rule can build a value
    whose lists share items over and over, with far more leaves than lists.
    """
    out = values
    for i, item in enumerate(values):
        kind = type(item)
        if kind is float:
            new = item if math.isfinite(item) else None
        elif kind is list and depth < MAX_DEPTH:
            if done is None:
                done = {}
            cleaned = done.get(id(item))
            if cleaned is None:
                cleaned = done[id(item)] = finite_values(item, depth + 1, done)
            new = cleaned
        else:
            continue
        if new is not item:
            if out is values:
                out = list(values)  # copy on first change: never mutate the data
            out[i] = new
    return out


# --- equality and ordering ----------------------------------------------------


def _strict_eq(a: Any, b: Any, depth: int = 0, equal: set[tuple[int, int]] | None = None) -> bool:
    kind_a = type(a)
    if kind_a is type(b) and kind_a in _SIMPLE:
        return bool(a == b)
    kind = _kind(a)
    if kind != _kind(b):
        return False
    if kind in (_ARR, _OBJ):
        if len(a) != len(b):
            return False
        if depth >= MAX_DEPTH:
            raise _value_too_deep()
        _spend(len(a))
        # Pairs found equal are not compared again: values whose containers
        # share items over and over compare in the time of their containers.
        if equal is None:
            equal = set()
        elif (id(a), id(b)) in equal:
            return True
        if kind == _ARR:
            same = all(_strict_eq(x, y, depth + 1, equal) for x, y in zip(a, b, strict=True))
        else:
            same = all(
                (other := b.get(key, _MISSING)) is not _MISSING
                and _strict_eq(item, other, depth + 1, equal)
                for key, item in a.items()
            )
        if same:
            equal.add((id(a), id(b)))
        return same
    if kind == _OTHER:
        return a is b
    return bool(a == b)


def _loose_eq(a: Any, b: Any) -> bool:
    kind_a = type(a)
    if kind_a is type(b) and kind_a in _SIMPLE:
        return bool(a == b)
    ka, kb = _kind(a), _kind(b)
    if ka == kb:
        return _strict_eq(a, b)
    if ka == _NULL or kb == _NULL:
        return False
    if ka == _BOOL:
        return _loose_eq(1 if a else 0, b)
    if kb == _BOOL:
        return _loose_eq(a, 1 if b else 0)
    if ka == _NUM and kb == _STR:
        return bool(a == _parse_number(b))
    if ka == _STR and kb == _NUM:
        return bool(_parse_number(a) == b)
    if ka >= _ARR and kb >= _ARR:
        return False  # two different kinds of object
    if ka >= _ARR:
        return _loose_eq(_to_primitive(a), b)
    return _loose_eq(a, _to_primitive(b))


def compare_values(a: Any, b: Any, cmp: Callable[[Any, Any], bool]) -> bool:
    ta, tb = type(a), type(b)
    if (ta is int or ta is float) and (tb is int or tb is float):
        return cmp(a, b)
    a, b = _to_primitive(a), _to_primitive(b)
    if type(a) is str and type(b) is str:
        return cmp(a, b)  # by code point; JavaScript uses UTF-16 units (differs beyond BMP)
    return cmp(_to_number(a), _to_number(b))


# --- operators ------------------------------------------------------------------


def _binary(name: str, fn: Callable[[Any, Any], Any]) -> _Op:
    def op(raw: Any, data: Any, depth: int) -> Any:
        if (type(raw) is not list and type(raw) is not tuple) or len(raw) != 2:
            raw = _args(raw, name)
        return fn(_eval(raw[0], data, depth), _eval(raw[1], data, depth))

    return op


def _between(name: str, cmp: Callable[[Any, Any], bool]) -> _Op:
    def op(raw: Any, data: Any, depth: int) -> bool:
        args = _args(raw, name)
        a, b = _eval(args[0], data, depth), _eval(args[1], data, depth)
        if len(args) == 2:
            return compare_values(a, b, cmp)
        c = _eval(args[2], data, depth)
        return compare_values(a, b, cmp) and compare_values(b, c, cmp)

    return op


def _unary(name: str, fn: Callable[[Any], Any]) -> _Op:
    def op(raw: Any, data: Any, depth: int) -> Any:
        if type(raw) is list or type(raw) is tuple:
            raw = _args(raw, name)[0]
        return fn(_eval(raw, data, depth))

    return op


def lookup_path(data: Any, path: Any, default: Any) -> Any:
    if type(path) is not str:
        if path is None:
            return data
        path = _to_string(path)  # JavaScript: String(path), which may be ""
    elif not path:
        return data
    if "." not in path:
        return step_into(data, path, default)
    if len(path) > _LONG_PATH:
        _spend(path.count("."))
    for segment in path.split("."):
        data = step_into(data, segment, _MISSING)
        if data is _MISSING:
            return default
    return data


def step_into(data: Any, key: str, default: Any) -> Any:
    kind = type(data)
    if kind is dict:
        return data.get(key, default)
    if kind is list or kind is tuple or kind is str:
        # only canonical indexes, as in JavaScript: "0", "12"; not "01", "-1", "1.0"
        if key.isdigit() and key.isascii() and len(key) < 19 and (key[0] != "0" or key == "0"):
            index = int(key)
            if index < len(data):
                return data[index]
        return default
    if kind not in PLAIN_TYPES and isinstance(data, Mapping):
        return data.get(key, default)
    return default


def _op_var(raw: Any, data: Any, depth: int) -> Any:
    if type(raw) is str:
        if raw and "." not in raw:
            return step_into(data, raw, None)
        return lookup_path(data, raw, None)
    args = _args(raw, "var")
    if not args:
        return data
    default = _eval(args[1], data, depth) if len(args) == 2 else None
    return lookup_path(data, _eval(args[0], data, depth), default)


def _missing_keys(data: Any, keys: Sequence[Any]) -> list[Any]:
    _spend(len(keys))
    out = []
    for key in keys:
        value = lookup_path(data, key, None)
        if value is None or (type(value) is str and not value):
            out.append(key)
    return out


def _op_missing(raw: Any, data: Any, depth: int) -> list[Any]:
    values = [_eval(arg, data, depth) for arg in _args(raw, "missing")]
    return _missing_keys(data, values[0] if values and _is_array(values[0]) else values)


def _op_missing_some(raw: Any, data: Any, depth: int) -> list[Any]:
    args = _args(raw, "missing_some")
    need, keys = _eval(args[0], data, depth), _eval(args[1], data, depth)
    missing = _missing_keys(data, keys if _is_array(keys) else [keys])
    if not _is_array(keys) and type(keys) is not str:
        return missing  # JavaScript: keys.length is undefined, so the test below is false
    return [] if compare_values(len(keys) - len(missing), need, operator.ge) else missing


def _op_if(raw: Any, data: Any, depth: int) -> Any:
    args = _args(raw, "if")
    count, i = len(args), 0
    while i < count - 1:
        if truthy(_eval(args[i], data, depth)):
            return _eval(args[i + 1], data, depth)
        i += 2
    return _eval(args[i], data, depth) if i < count else None


def _logical(name: str, stop_when: bool) -> _Op:
    def op(raw: Any, data: Any, depth: int) -> Any:
        value = None  # JavaScript: undefined, for no arguments
        for arg in _args(raw, name):
            value = _eval(arg, data, depth)
            if truthy(value) is stop_when:
                return value
        return value

    return op


def _bounded(number: int | float) -> int | float:
    """An integer past :data:`MAX_EXACT_BITS` overflows to an infinity, as in JavaScript.

    Without it, a ``reduce`` that squares its accumulator builds integers of
    billions of bits and freezes the event loop; json-logic-js reaches
    ``Infinity`` after about ten squarings, and so does this.
    """
    if type(number) is int and number.bit_length() > MAX_EXACT_BITS:
        return _INF if number > 0 else -_INF
    return number


def _op_add(raw: Any, data: Any, depth: int) -> int | float:
    total: int | float = 0
    try:
        for arg in _args(raw, "+"):
            total = _bounded(total + _bounded(_to_number(_eval(arg, data, depth))))
    except OverflowError:  # an int beyond float range met a float
        return _NAN
    return total


def _op_multiply(raw: Any, data: Any, depth: int) -> int | float:
    args = _args(raw, "*")
    product = _bounded(_to_number(_eval(args[0], data, depth)))
    try:
        for arg in args[1:]:
            product = _bounded(product * _bounded(_to_number(_eval(arg, data, depth))))
    except OverflowError:
        return _NAN
    return product


def _op_subtract(raw: Any, data: Any, depth: int) -> int | float:
    args = _args(raw, "-")
    a = _bounded(_to_number(_eval(args[0], data, depth)))
    try:
        if len(args) == 1:
            return -a
        return _bounded(a - _bounded(_to_number(_eval(args[1], data, depth))))
    except OverflowError:
        return _NAN


def _divide(a: Any, b: Any) -> int | float:
    x, y = _bounded(_to_number(a)), _bounded(_to_number(b))
    if y == 0:
        if x == 0 or x != x:
            return _NAN
        return _INF if (x > 0) == (math.copysign(1.0, y) > 0) else -_INF
    if type(x) is int and type(y) is int and x % y == 0:
        return x // y
    try:
        return x / y
    except OverflowError:
        return _NAN


def _modulo(a: Any, b: Any) -> int | float:
    x, y = _bounded(_to_number(a)), _bounded(_to_number(b))
    if y == 0:
        return _NAN
    if type(x) is int and type(y) is int:
        rest = abs(x) % abs(y)
        return -rest if x < 0 else rest  # the sign of the dividend, as in JavaScript
    try:
        return math.fmod(x, y)
    except (ValueError, OverflowError):  # an infinite dividend
        return _NAN


def _extreme(name: str, pick: Callable[[list[int | float]], int | float]) -> _Op:
    def op(raw: Any, data: Any, depth: int) -> int | float:
        numbers = [_bounded(_to_number(_eval(arg, data, depth))) for arg in _args(raw, name)]
        if not numbers:
            return -_INF if name == "max" else _INF
        return _NAN if any(n != n for n in numbers) else pick(numbers)

    return op


def _op_cat(raw: Any, data: Any, depth: int) -> str:
    values = [_eval(arg, data, depth) for arg in _args(raw, "cat")]
    # json-logic-js joins its arguments (Array.prototype.join), which skips null
    text = _sized("cat", "".join("" if value is None else _to_string(value) for value in values))
    _spend(len(text))
    return text


def _op_substr(raw: Any, data: Any, depth: int) -> str:
    args = _args(raw, "substr")
    text = _to_string(_eval(args[0], data, depth))
    start = _to_int(_eval(args[1], data, depth))
    if start < 0:
        start = max(len(text) + start, 0)
    if len(args) == 2:
        return text[start:]
    length = _to_number(_eval(args[2], data, depth))
    if length < 0:  # json-logic-js: drop that many characters from the end
        tail = text[start:]
        return tail[: max(_to_int(len(tail) + length), 0)]
    return text[start : start + _to_int(length)]


def _contains(needle: Any, haystack: Any) -> bool:
    if type(haystack) is str:
        return bool(haystack) and _to_string(needle) in haystack
    if _is_array(haystack):
        _spend(len(haystack))
        return any(_strict_eq(needle, item) for item in haystack)
    return False


def _op_merge(raw: Any, data: Any, depth: int) -> list[Any]:
    out: list[Any] = []
    for arg in _args(raw, "merge"):
        value = _eval(arg, data, depth)
        if _is_array(value):
            out.extend(value)
        else:
            out.append(value)
        _sized("merge", out)
    _spend(len(out))
    return out


def _sized(name: str, built: _Sized) -> _Sized:
    """``built``, or a :class:`JsonLogicError` when it is over :data:`MAX_SIZE`.

    A ``reduce`` that doubles a string or a list would otherwise take all memory.
    """
    if len(built) > MAX_SIZE:
        raise JsonLogicError(
            f"JsonLogic {name!r} built a value of {len(built):,} "
            f"{'characters' if name == 'cat' else 'items'}, over the limit of {MAX_SIZE:,}; "
            "a rule decides, it does not build data: move that work into a stage"
        )
    return built


def _over_array(name: str) -> _Op:
    def op(raw: Any, data: Any, depth: int) -> Any:
        args = _args(raw, name)
        items, rule = _eval(args[0], data, depth), args[1]
        if not _is_array(items) or not items:
            return [] if name == "map" or name == "filter" else name == "none"
        cost = 1 + rule_size(rule)  # per item: see MAX_STEPS
        left, token = _open_loop()
        try:
            if name == "map" or name == "filter":
                out = []
                for item in items:
                    left[0] -= cost
                    if left[0] < 0:
                        raise _too_many_steps()
                    value = _eval(rule, item, depth)
                    if name == "map":
                        out.append(value)
                    elif truthy(value):
                        out.append(item)
                return out
            for item in items:
                left[0] -= cost
                if left[0] < 0:
                    raise _too_many_steps()
                if truthy(_eval(rule, item, depth)) is not (name == "all"):
                    return name == "some"  # all: a false item; some, none: a true one
            return name != "some"  # all: every item true; some, none: no item true
        finally:
            _close_loop(left, token)

    return op


def _op_reduce(raw: Any, data: Any, depth: int) -> Any:
    args = _args(raw, "reduce")
    items = _eval(args[0], data, depth)
    rule = args[1]
    accumulator = _eval(args[2], data, depth) if len(args) == 3 else None
    if not _is_array(items) or not items:
        return accumulator
    cost = 1 + rule_size(rule)  # per item: see MAX_STEPS
    left, token = _open_loop()
    try:
        for item in items:
            left[0] -= cost
            if left[0] < 0:
                raise _too_many_steps()
            accumulator = _eval(rule, {"current": item, "accumulator": accumulator}, depth)
    finally:
        _close_loop(left, token)
    return accumulator


# The functions behind the fixed-arity operators, shared with the rule compiler
# (stageflow._jsonlogic_compiled), which calls them without the argument checks.
BINARY_OPS: Final[dict[str, Callable[[Any, Any], Any]]] = {
    "==": _loose_eq,
    "===": _strict_eq,
    "!=": lambda a, b: not _loose_eq(a, b),
    "!==": lambda a, b: not _strict_eq(a, b),
    ">": lambda a, b: compare_values(a, b, operator.gt),
    ">=": lambda a, b: compare_values(a, b, operator.ge),
    "/": _divide,
    "%": _modulo,
    "in": _contains,
}
BETWEEN_OPS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "<": operator.lt,
    "<=": operator.le,
}
UNARY_OPS: Final[dict[str, Callable[[Any], Any]]] = {
    "!": lambda a: not truthy(a),
    "!!": truthy,
    "log": lambda a: a,  # deliberately silent: prints nothing
}

OPERATOR_TABLE: Final[dict[str, _Op]] = {
    "var": _op_var,
    "missing": _op_missing,
    "missing_some": _op_missing_some,
    "if": _op_if,
    "?:": _op_if,
    "and": _logical("and", False),
    "or": _logical("or", True),
    **{name: _unary(name, fn) for name, fn in UNARY_OPS.items()},
    **{name: _binary(name, fn) for name, fn in BINARY_OPS.items()},
    **{name: _between(name, cmp) for name, cmp in BETWEEN_OPS.items()},
    "+": _op_add,
    "-": _op_subtract,
    "*": _op_multiply,
    "min": _extreme("min", min),
    "max": _extreme("max", max),
    "cat": _op_cat,
    "substr": _op_substr,
    "merge": _op_merge,
    "map": _over_array("map"),
    "filter": _over_array("filter"),
    "reduce": _op_reduce,
    "all": _over_array("all"),
    "some": _over_array("some"),
    "none": _over_array("none"),
}

OPERATORS: Final[frozenset[str]] = frozenset(OPERATOR_TABLE)
"""The names of every supported operator."""

# The operators that evaluate a rule once per item: the steps of MAX_STEPS.
LOOPS: Final = frozenset({"map", "filter", "reduce", "all", "some", "none"})


def has_loop(rule: Any) -> bool:
    """Whether ``rule`` holds an operator of :data:`LOOPS`, where evaluation may take long.

    A rule too large to look through (past :data:`MAX_STEPS` values) is taken to.
    """
    todo = [rule]
    looked = 0
    while todo:
        value = todo.pop()
        looked += 1
        if looked > MAX_STEPS:
            return True
        if type(value) is list or type(value) is tuple:
            todo.extend(value)
        elif _is_operation(value):
            [(name, args)] = value.items()
            if name in LOOPS:
                return True
            todo.append(args)
    return False


_ANY_COUNT: Final = (0, _MANY)
# (fewest, most) arguments of each operator that limits them; the others take any number.
_ARITY: Final[dict[str, tuple[int, int]]] = {
    **{name: (2, 2) for name in BINARY_OPS},
    **{name: (2, 3) for name in BETWEEN_OPS},
    **{name: (1, 1) for name in UNARY_OPS},
    **{name: (2, 2) for name in ("map", "filter", "all", "some", "none", "missing_some")},
    "var": (0, 2),
    "*": (1, _MANY),
    "-": (1, 2),
    "substr": (2, 3),
    "reduce": (2, 3),
}

_USAGE: Final[dict[str, str]] = {
    **{name: f'{{"{name}": [a, b]}}' for name in ("==", "===", "!=", "!==", ">", ">=", "/", "%")},
    **{name: f'{{"{name}": [a, b]}} or {{"{name}": [a, b, c]}}' for name in ("<", "<=")},
    **{name: f'{{"{name}": value}}' for name in ("!", "!!", "log")},
    **{name: f'{{"{name}": [array, rule]}}' for name in ("map", "filter", "all", "some", "none")},
    "-": '{"-": [a, b]} or {"-": value}',
    "*": '{"*": [a, b, ...]}',
    "in": '{"in": [needle, string_or_array]}',
    "substr": '{"substr": [text, start]} or {"substr": [text, start, length]}',
    "var": '{"var": "path"} or {"var": ["path", default]}',
    "missing_some": '{"missing_some": [count, ["path", ...]]}',
    "reduce": '{"reduce": [array, rule, initial]}',
}


def check(rule: Any) -> list[tuple[str, str]]:
    """Find what would make ``rule`` fail before evaluating it.

    Returns ``(location, message)`` pairs, the location relative to the rule
    (``""`` for the rule itself, ``.and[1]`` for an argument): unknown
    operators (every one-key object is an operation, as :func:`apply` treats
    it), operators given a wrong number of arguments and nesting deeper than
    :data:`MAX_DEPTH`: every error :func:`apply` can raise that does not depend
    on the data, wherever it is in the rule (a branch ``apply`` would not take
    included). Reads the rule only.
    """
    problems: list[tuple[str, str]] = []
    # Levels as evaluation counts them: an operation and an array literal are
    # one each; an operation's argument list is not one of its own.
    stack: list[tuple[str, Any, int]] = [("", rule, 0)]
    while stack:
        where, value, depth = stack.pop()
        nested = isinstance(value, list | tuple) or (isinstance(value, Mapping) and len(value) == 1)
        if nested and depth >= MAX_DEPTH:
            problems.append((where, f"the rule nests more than {MAX_DEPTH} levels deep"))
            continue
        if isinstance(value, Mapping):
            if len(value) == 1:
                [(name, args)] = value.items()
                if name not in OPERATORS:
                    problems.append(
                        (
                            where,
                            f"unknown JsonLogic operator {name!r}; supported: "
                            f"{', '.join(sorted(OPERATORS))}",
                        )
                    )
                    continue
                count = len(args) if isinstance(args, list | tuple) else 1
                low, high = _ARITY.get(name, _ANY_COUNT)
                if not low <= count <= high:
                    problems.append((where, _arity_message(name, count)))
                if isinstance(args, list | tuple):
                    stack.extend(
                        (f"{where}.{name}[{i}]", item, depth + 1) for i, item in enumerate(args)
                    )
                else:
                    stack.append((f"{where}.{name}", args, depth + 1))
            continue
        if isinstance(value, list | tuple):
            stack.extend((f"{where}[{i}]", item, depth + 1) for i, item in enumerate(value))
    return sorted(problems)


def operations_written_as_one_object(rule: Any) -> list[tuple[str, str]]:
    """Objects of several keys, every one an operator name: a literal where operations were meant.

    ``{"==": [...], ">": [...]}`` is an object of two keys, which JsonLogic
    reads as a literal (an operation is an object of exactly one key): as a
    condition it is always true, whatever the data. :func:`apply` takes it as
    the language says; the loader reports it, with :func:`check`'s locations.
    """
    found: list[tuple[str, str]] = []
    stack: list[tuple[str, Any]] = [("", rule)]
    looked = 0
    while stack and looked <= MAX_STEPS:  # a rule built in Python may share its lists
        where, value = stack.pop()
        looked += 1
        if isinstance(value, list | tuple):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(value))
        elif isinstance(value, Mapping):
            if len(value) == 1:
                [(name, args)] = value.items()
                if isinstance(args, list | tuple):
                    stack.extend((f"{where}.{name}[{i}]", item) for i, item in enumerate(args))
                else:
                    stack.append((f"{where}.{name}", args))
            elif len(value) > 1 and all(key in OPERATORS for key in value):
                names = ", ".join(repr(key) for key in value)
                together = ", ".join(f'{{"{key}": ...}}' for key in value)
                found.append(
                    (
                        where,
                        f"an object of {len(value)} keys ({names}) is a literal in JsonLogic, "
                        "not operations, and is always true: an operation is an object of "
                        f'exactly one key; to require them all, write {{"and": [{together}]}}',
                    )
                )
    return sorted(found)
