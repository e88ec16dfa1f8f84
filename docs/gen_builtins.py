"""Generate docs/builtins.md, the built-in stage catalogue, from the stage specs.

    python docs/gen_builtins.py            # rewrite docs/builtins.md
    python docs/gen_builtins.py --check    # exit 1 if docs/builtins.md is stale

The tables come from each stage's ``StageSpec`` (description and JSON
Schemas) and the text from its docstring; the examples below are written by
hand, and the test suite runs every one of them as a real pipeline and checks
the context (or the error) it shows.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import stageflow.builtins

OUTPUT = Path(__file__).with_name("builtins.md")


class Example(NamedTuple):
    """One hand-written example: a stage node, the payload before, and what follows.

    ``node`` holds the node's ``stage``, ``arguments``, ``config`` and
    ``outputs`` (the id and ``next`` are added when it runs). ``after`` is the
    whole context after a completed run; ``error`` the class name of the
    error a failed run ends with. Exactly one of them is set.
    """

    title: str
    node: Mapping[str, Any]
    payload: Mapping[str, Any]
    after: Mapping[str, Any] | None = None
    error: str | None = None


def _node(stage: str, **fields: Any) -> dict[str, Any]:
    return {"stage": f"builtins.{stage}", **fields}


EXAMPLES: Mapping[str, Sequence[Example]] = {
    "builtins.set": [
        Example(
            "Start a retry counter at zero.",
            _node("set", config={"value": 0}, outputs={"value": "retries"}),
            {},
            after={"retries": 0},
        ),
    ],
    "builtins.copy": [
        Example(
            "Copy the customer into the invoice; later changes to one do not touch the other.",
            _node("copy", arguments={"value": "order.customer"}, outputs={"value": "invoice.to"}),
            {"order": {"customer": {"name": "Ada"}}},
            after={"order": {"customer": {"name": "Ada"}}, "invoice": {"to": {"name": "Ada"}}},
        ),
    ],
    "builtins.increment": [
        Example(
            "Count an attempt.",
            _node("increment", arguments={"value": "retries"}, outputs={"value": "retries"}),
            {"retries": 2},
            after={"retries": 3},
        ),
        Example(
            "Subtract with a negative step.",
            _node(
                "increment",
                arguments={"value": "stock"},
                config={"by": -5},
                outputs={"value": "stock"},
            ),
            {"stock": 12},
            after={"stock": 7},
        ),
    ],
    "builtins.merge": [
        Example(
            "Apply a user's settings over the defaults, deeply.",
            _node(
                "merge",
                arguments={"base": "defaults", "update": "user"},
                config={"deep": True},
                outputs={"value": "settings"},
            ),
            {
                "defaults": {"theme": "light", "mail": {"daily": True, "weekly": True}},
                "user": {"mail": {"daily": False}},
            },
            after={
                "defaults": {"theme": "light", "mail": {"daily": True, "weekly": True}},
                "user": {"mail": {"daily": False}},
                "settings": {"theme": "light", "mail": {"daily": False, "weekly": True}},
            },
        ),
    ],
    "builtins.pick": [
        Example(
            "Keep only the public fields of a user.",
            _node(
                "pick",
                arguments={"value": "user"},
                config={"keys": ["name", "email", "phone"]},
                outputs={"value": "profile"},
            ),
            {"user": {"email": "ada@example.org", "name": "Ada", "token": "s3cret"}},
            after={
                "user": {"email": "ada@example.org", "name": "Ada", "token": "s3cret"},
                "profile": {"name": "Ada", "email": "ada@example.org"},
            },
        ),
    ],
    "builtins.drop": [
        Example(
            "Remove a secret before the request is logged.",
            _node(
                "drop",
                arguments={"value": "request"},
                config={"keys": ["token"]},
                outputs={"value": "request"},
            ),
            {"request": {"path": "/orders", "token": "s3cret"}},
            after={"request": {"path": "/orders"}},
        ),
    ],
    "builtins.append": [
        Example(
            "Record a step in a list.",
            _node(
                "append",
                arguments={"list": "steps", "item": "current"},
                outputs={"value": "steps"},
            ),
            {"steps": ["fetch"], "current": "parse"},
            after={"steps": ["fetch", "parse"], "current": "parse"},
        ),
    ],
    "builtins.extend": [
        Example(
            "Add a page of results to the results so far.",
            _node(
                "extend",
                arguments={"list": "results", "items": "page"},
                outputs={"value": "results"},
            ),
            {"results": [1, 2], "page": [3, 4]},
            after={"results": [1, 2, 3, 4], "page": [3, 4]},
        ),
    ],
    "builtins.unique": [
        Example(
            "Deduplicate tags, keeping their first order.",
            _node("unique", arguments={"list": "tags"}, outputs={"value": "tags"}),
            {"tags": ["b", "a", "b", "c", "a"]},
            after={"tags": ["b", "a", "c"]},
        ),
    ],
    "builtins.pop": [
        Example(
            "Take the first job off a queue.",
            _node(
                "pop",
                arguments={"list": "queue"},
                config={"index": 0},
                outputs={"item": "job", "value": "queue"},
            ),
            {"queue": ["a", "b", "c"]},
            after={"queue": ["b", "c"], "job": "a"},
        ),
    ],
    "builtins.filter": [
        Example(
            "Keep the items that cost more than 10 (the rule reads each item).",
            _node(
                "filter",
                arguments={"items": "cart"},
                config={"rule": {">": [{"var": "price"}, 10]}},
                outputs={"value": "expensive"},
            ),
            {"cart": [{"sku": "a", "price": 5}, {"sku": "b", "price": 20}]},
            after={
                "cart": [{"sku": "a", "price": 5}, {"sku": "b", "price": 20}],
                "expensive": [{"sku": "b", "price": 20}],
            },
        ),
        Example(
            'Compare with another context value: with `"data": "scope"` the rule reads '
            "`item`, `index` and `arguments`.",
            _node(
                "filter",
                arguments={"items": "cart", "budget": "budget"},
                config={
                    "rule": {"<=": [{"var": "item.price"}, {"var": "arguments.budget"}]},
                    "data": "scope",
                },
                outputs={"value": "affordable"},
            ),
            {"cart": [{"sku": "a", "price": 5}, {"sku": "b", "price": 20}], "budget": 10},
            after={
                "cart": [{"sku": "a", "price": 5}, {"sku": "b", "price": 20}],
                "budget": 10,
                "affordable": [{"sku": "a", "price": 5}],
            },
        ),
    ],
    "builtins.concat": [
        Example(
            "Join a name from two paths.",
            _node(
                "concat",
                arguments={"first": "user.first", "last": "user.last"},
                config={"order": ["first", "last"], "separator": " "},
                outputs={"value": "user.full"},
            ),
            {"user": {"first": "Ada", "last": "Lovelace"}},
            after={"user": {"first": "Ada", "last": "Lovelace", "full": "Ada Lovelace"}},
        ),
        Example(
            "Concatenate lists.",
            _node(
                "concat",
                arguments={"a": "urgent", "b": "normal"},
                config={"order": ["a", "b"]},
                outputs={"value": "all"},
            ),
            {"urgent": ["x"], "normal": ["y", "z"]},
            after={"urgent": ["x"], "normal": ["y", "z"], "all": ["x", "y", "z"]},
        ),
    ],
    "builtins.template": [
        Example(
            "Write a message; `{{` and `}}` are literal braces, non-strings are JSON.",
            _node(
                "template",
                arguments={"user": "user", "count": "cart.count"},
                config={"template": "Hi {user.name}, {count} items in your cart {{ok}}"},
                outputs={"value": "message"},
            ),
            {"user": {"name": "Ada"}, "cart": {"count": 3}},
            after={
                "user": {"name": "Ada"},
                "cart": {"count": 3},
                "message": "Hi Ada, 3 items in your cart {ok}",
            },
        ),
    ],
    "builtins.assert": [
        Example(
            "Check an invariant; the run goes on when it holds.",
            _node(
                "assert",
                arguments={"total": "order.total"},
                config={"rule": {">": [{"var": "total"}, 0]}, "message": "the total is positive"},
            ),
            {"order": {"total": 12}},
            after={"order": {"total": 12}},
        ),
        Example(
            "When it does not, the session fails with `AssertionFailedError`.",
            _node(
                "assert",
                arguments={"total": "order.total"},
                config={"rule": {">": [{"var": "total"}, 0]}, "message": "the total is positive"},
            ),
            {"order": {"total": 0}},
            error="AssertionFailedError",
        ),
    ],
    "builtins.fail": [
        Example(
            "Simulate a rate limit to test how the pipeline handles it.",
            _node("fail", config={"message": "429 from the API", "error_type": "RateLimited"}),
            {},
            error="RateLimited",
        ),
    ],
    "builtins.log": [
        Example(
            "Log the order id at warning level (the context is unchanged).",
            _node(
                "log",
                arguments={"order": "order.id"},
                config={"event": "order.flagged", "level": "warning"},
            ),
            {"order": {"id": "o-1"}},
            after={"order": {"id": "o-1"}},
        ),
    ],
}

INTRO = """\
# Built-in stages

<!-- Generated by docs/gen_builtins.py from the stage specs: do not edit by hand.
     Run `python docs/gen_builtins.py` after changing a built-in stage. -->

stageflow ships small data stages that most pipelines need, in the public
module `stageflow.builtins`. Each has a `StageSpec` whose JSON Schemas for
arguments, config and outputs are checked when a pipeline is loaded, and
typed errors for input it cannot use.

## Using them

They are registered under names starting with `builtins.`, a namespace kept
for them, so they never clash with your stages. They are not in the default
registry; get a registry that has them and add your own stages to it:

```python
import trio

import stageflow
import stageflow.builtins

registry = stageflow.builtins.registry()  # a new registry with every built-in


@registry.register("Score")
async def score(ctx: stageflow.StageContext) -> dict[str, int]:
    return {"score": len(ctx.arguments["text"])}


pipeline = stageflow.Pipeline.from_dict(
    {
        "api_version": "1.0",
        "entry": "score",
        "nodes": [
            {
                "id": "score",
                "type": "stage",
                "stage": "Score",
                "arguments": {"text": "text"},
                "outputs": {"score": "score"},
                "next": "bonus",
            },
            {
                "id": "bonus",
                "type": "stage",
                "stage": "builtins.increment",
                "arguments": {"value": "score"},
                "config": {"by": 10},
                "outputs": {"value": "score"},
                "next": "end",
            },
            {"id": "end", "type": "terminal", "result": {}, "artifacts": ["score"]},
        ],
    },
    registry=registry,
)
session = stageflow.Session(pipeline, payload={"text": "hi"})
result = trio.run(session.run)
assert result.artifacts == {"score": 12}
```

or add them to a registry you already have with
`stageflow.builtins.register(registry)` (all or nothing: a name that is
already taken raises `StageConflictError` and adds none).

## Conventions

- A stage that computes a value outputs it as `value` (`builtins.pop` also
  outputs `item`). What it returns never shares a list or object with the
  context: writing below one path later never changes another.
- Arguments are read from the context by the node's `arguments` mapping. A
  required argument must be mapped (checked at load time) *and* its path
  must hold a value when the node runs: a path that holds nothing is an
  error, not an empty default. Initialise counters and lists with
  `builtins.set`.
- Errors are `stageflow.builtins.BuiltinStageError` (a `stageflow.StageError`),
  and end the session `failed` with the error as `SessionResult.error`:
  `BuiltinArgumentError` (an argument is absent or of the wrong type;
  `.argument`), `TemplateError` (a template placeholder names nothing;
  `.placeholder`), `BuiltinConfigError` (a config that only the data shows
  to be unusable, such as a JsonLogic rule that goes past one of JsonLogic's
  bounds on the values it reads; an unknown operator is found at load time),
  `AssertionFailedError` (`builtins.assert`; `.rule`, `.values`) and
  `InjectedFailureError` (`builtins.fail`; `.error_type`). Messages name the
  stage, the node and how to fix the problem. One exception: with
  `"validate_events": "strict"` the engine checks every stage's arguments
  against its declared schema before the stage runs, so an argument that is
  absent or of the wrong type ends the session with
  `stageflow.StageSchemaError` (`.key`) instead of `BuiltinArgumentError`
  (with `"warn"`, the default, it records a `contract_violation` event and
  the built-in raises as above).
- Config mistakes (a missing or misspelt key, a wrong type, a malformed
  template) are pipeline validation problems, reported before anything runs.
- No built-in stage builds a string of more than 16,777,216 characters
  (`stageflow.builtins.MAX_TEXT`, the size of the largest document stageflow
  reads): `builtins.concat` and `builtins.template` raise a plain
  `BuiltinStageError` instead, so a loop that doubles a string on every turn
  fails within a few turns rather than taking the process's memory. Lists
  are bounded by the [value guard](limits.md#json-values).
"""


def _markdown(text: str) -> str:
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _type(schema: Mapping[str, Any]) -> str:
    if "enum" in schema:
        return " or ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    kind = schema.get("type")
    if kind is None:
        return "any"
    kinds = [kind] if isinstance(kind, str) else list(kind)
    text = " or ".join(kinds)
    items = schema.get("items")
    if kinds == ["array"] and isinstance(items, Mapping) and "type" in items:
        text = f"array of {items['type']}"
    return text


def _notes(schema: Mapping[str, Any]) -> str:
    notes = []
    if schema.get("minItems") == 1 or schema.get("minLength") == 1:
        notes.append("non-empty")
    if schema.get("uniqueItems"):
        notes.append("no duplicates")
    description = str(schema.get("description", ""))
    if notes:
        description += f" {', '.join(notes).capitalize()}."
    return description


def _table(schema: Mapping[str, Any] | None, *, kind: str) -> list[str]:
    if schema is None:
        return [f"Not declared: any {kind}."]
    properties: Mapping[str, Any] = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    required = set(schema.get("required", ()))
    outputs = kind == "outputs"
    if not properties and extra is False:
        return [{"arguments": "None.", "config": "None.", "outputs": "None."}[kind]]
    if outputs:
        lines = ["| Name | Type | Description |", "| --- | --- | --- |"]
    else:
        lines = [
            "| Name | Type | Required | Default | Description |",
            "| --- | --- | --- | --- | --- |",
        ]
    rows: list[tuple[str, Mapping[str, Any], bool]] = [
        (f"`{name}`", sub, name in required) for name, sub in properties.items()
    ]
    if extra is not False:
        label = "*any other name*" if properties else "*any name*"
        rows.append((label, extra if isinstance(extra, Mapping) else {}, False))
    for name, sub, is_required in rows:
        type_ = _cell(_type(sub))
        notes = _cell(_notes(sub))
        if outputs:
            lines.append(f"| {name} | {type_} | {notes} |")
        else:
            default = f"`{json.dumps(sub['default'])}`" if "default" in sub else ""
            lines.append(
                f"| {name} | {type_} | {'yes' if is_required else 'no'} | {default} | {notes} |"
            )
    return lines


def _json_node(node: Mapping[str, Any]) -> str:
    """One key per line, each value compact: short enough to read, still valid JSON."""
    fields = [f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in node.items()]
    return "{\n" + ",\n".join(fields) + "\n}"


def _example(example: Example) -> list[str]:
    node = {"id": "example", "type": "stage", **example.node, "next": "end"}
    lines = [f"*{example.title}*", "", "```json", _json_node(node), "```", ""]
    lines.append(f"With the context `{json.dumps(example.payload)}`,")
    if example.error is not None:
        lines.append(f"the session fails with `{example.error}`.")
    else:
        lines.append(f"the context afterwards is `{json.dumps(example.after)}`.")
    return lines


def _anchor(name: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "", name.lower())


def render() -> str:
    """Return the text of docs/builtins.md."""
    lines = [INTRO, "## Catalogue", ""]
    for name, cls in stageflow.builtins.STAGES.items():
        lines.append(f"- [`{name}`](#{_anchor(name)}): {cls.spec.description}")
    for name, cls in stageflow.builtins.STAGES.items():
        spec = cls.spec
        doc = inspect.getdoc(cls) or ""
        _, _, body = doc.partition("\n\n")
        lines += ["", f"## `{name}`", "", spec.description, ""]
        if body:
            lines += [_markdown(body), ""]
        lines += [f"Class: `stageflow.builtins.{cls.__name__}`.", ""]
        for title, schema, kind in (
            ("Arguments", spec.arguments, "arguments"),
            ("Config", spec.config, "config"),
            ("Outputs", spec.outputs, "outputs"),
        ):
            lines += [f"**{title}**", "", *_table(schema, kind=kind), ""]
        for example in EXAMPLES.get(name, ()):
            lines += ["**Example**", "", *_example(example), ""]
        if lines[-1] == "":
            lines.pop()
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write docs/builtins.md, or with ``--check`` report whether it is stale."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is stale; run: python docs/gen_builtins.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
