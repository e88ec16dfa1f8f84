"""The terminal live view of ``stageflow run``: which nodes are active right now.

Fed from the session's events (``node_started`` / ``node_finished`` /
``node_failed`` / ``node_cancelled``, ``waiting_for_input``); drawn with
``rich`` on the terminal, only once the run has lasted ``delay`` seconds
(short runs print nothing extra), refreshed every ``period`` seconds and
erased when the run ends, so the final output is the same as without it.
Times come from the running event loop's clock, so the view is testable in
virtual time.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import attrs
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from stageflow._events import Event

__all__ = ["LiveView"]

_FINISH_EVENTS = {"node_finished": "finished", "node_failed": "failed", "node_cancelled": None}


@attrs.define
class _Active:
    node_type: str
    since: float
    waiting_for: str | None = None


class LiveView:
    """Tracks the active nodes of one run and draws them on a terminal.

    Args:
        console: the rich console to draw on.
        title: what the run is (the pipeline name).
        delay: seconds to wait before drawing anything.
        period: seconds between redraws.
    """

    def __init__(
        self, console: Console, title: str, *, delay: float = 0.5, period: float = 0.25
    ) -> None:
        self._console = console
        self._title = title
        self._delay = delay
        self._period = period
        self._active: dict[tuple[str, str], _Active] = {}
        self._counts = {"finished": 0, "failed": 0}
        self._started: float | None = None
        self.shown = False
        """Whether the view was drawn at least once."""

    def on_event(self, event: Event) -> None:
        """Update the view with one session event."""
        if event.node_id is None:
            return
        key = (event.path, event.node_id)
        if event.type == "node_started":
            node_type = str(event.payload.get("node_type", "?"))
            self._active[key] = _Active(node_type, anyio.current_time())
        elif event.type in _FINISH_EVENTS:
            self._active.pop(key, None)
            counter = _FINISH_EVENTS[event.type]
            if counter is not None:
                self._counts[counter] += 1
        elif key in self._active:
            active = self._active[key]
            if event.type == "waiting_for_input":
                active.waiting_for = str(event.payload.get("input_type", "?"))
            else:
                active.waiting_for = None

    def render(self) -> Table:
        """The view as a rich table: one row per active node, oldest first."""
        now = anyio.current_time()
        elapsed = now - self._started if self._started is not None else 0.0
        # Text, not markup: a pipeline name or an input type may hold "[/]" or "[red]".
        table = Table(
            title=Text(
                f"{self._title}: {len(self._active)} active, {self._counts['finished']} "
                f"finished, {self._counts['failed']} failed, {elapsed:.1f} s"
            ),
            title_justify="left",
        )
        for column in ("node", "type", "branch", "running for", "state"):
            table.add_column(column)
        rows = sorted(self._active.items(), key=lambda item: item[1].since)
        for (path, node_id), active in rows:
            state = f"waiting for {active.waiting_for!r}" if active.waiting_for else "running"
            cells = (node_id, active.node_type, path or "-", f"{now - active.since:.1f} s", state)
            table.add_row(*map(Text, cells))
        return table

    @asynccontextmanager
    async def open(self) -> AsyncIterator[LiveView]:
        """Draw the view in a task while the ``async with`` body runs; erase it at the end."""
        self._started = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._show)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()

    async def _show(self) -> None:
        await anyio.sleep(self._delay)
        # Standard error on the terminal too: what is written there (log lines, the
        # CLI's warnings) is printed above the table, which would erase it. Sent to a
        # file (2>err.log), it stays there.
        to_terminal = sys.stderr is not None and sys.stderr.isatty()
        with Live(
            self.render(),
            console=self._console,
            auto_refresh=False,
            transient=True,
            redirect_stderr=to_terminal,
        ) as live:
            self.shown = True
            while True:
                await anyio.sleep(self._period)
                live.update(self.render(), refresh=True)
