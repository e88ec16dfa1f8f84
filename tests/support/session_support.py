"""Pipelines and a session builder shared by the session tests (``test_session*.py``).

Built from :mod:`fakes`: ``Set`` stages that write fixed values, a condition,
and three shapes of pipeline (a fan-out, a loop, one that hangs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fakes import doc, fake_registry, load, parallel, stage, terminal

import stageflow

COMPLETED = stageflow.SessionStatus.COMPLETED
FAILED = stageflow.SessionStatus.FAILED
CANCELLED = stageflow.SessionStatus.CANCELLED


def cond(node_id: str, rule: object, then: str, *, else_: str | None = None) -> dict[str, Any]:
    """A condition node: to ``then`` if ``rule`` holds, else to ``else_`` (if given)."""
    node: dict[str, Any] = {
        "id": node_id,
        "type": "condition",
        "conditions": [{"if": rule, "then": then}],
    }
    if else_ is not None:
        node["else"] = else_
    return node


def set_node(node_id: str, values: Mapping[str, Any], *, next: str | None = None) -> dict:
    """A ``Set`` stage writing ``values`` to the payload keys of the same names."""
    return stage(
        node_id, "Set", config={"values": dict(values)}, outputs={k: k for k in values}, next=next
    )


def session_for(
    document: Mapping[str, Any],
    registry: stageflow.StageRegistry | None = None,
    **kwargs: Any,
) -> stageflow.Session:
    """A session over ``document`` loaded with ``registry`` (the fakes' by default)."""
    registry = registry or fake_registry()
    return stageflow.Session(load(document, registry), registry=registry, **kwargs)


def fan_pipeline() -> dict[str, Any]:
    """``first`` sets ``a``, then ``left`` and ``right`` in parallel set ``l`` and ``r``."""
    return doc(
        [
            set_node("first", {"a": 1}, next="fan"),
            parallel("fan", ["left", "right"], next="end"),
            set_node("left", {"l": 1}),
            set_node("right", {"r": 2}),
            terminal("end", "a", "l", "r"),
        ]
    )


def loop_pipeline(**top: Any) -> dict[str, Any]:
    """``work`` and ``again`` loop for ever (``top``: e.g. the limits that end it)."""
    return doc(
        [
            set_node("work", {"x": 1}, next="again"),
            cond("again", True, "work", else_="end"),
            terminal("end"),
        ],
        **top,
    )


def hang_pipeline() -> dict[str, Any]:
    """``before`` sets ``a``, then ``hang`` never returns."""
    return doc(
        [
            set_node("before", {"a": 1}, next="hang"),
            stage("hang", "Hang", next="end"),
            terminal("end"),
        ]
    )
