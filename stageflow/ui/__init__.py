"""``stageflow ui``: a web inspector for pipelines and sessions (``pip install 'stageflow[ui]'``).

General layout: this package sits in the top layer, beside the CLI, and
reads sessions through public APIs only (``stageflow.Session.from_dict``,
``stageflow.Pipeline``, ``stageflow.store``); it draws pipelines with the
graph model of ``stageflow graph``. ``_sources`` reads sessions (a store, or
snapshot files), ``_inspect`` turns a snapshot and its events into what a
page shows, ``_layout`` and ``_drawing`` make the SVG, ``_pipelines`` reads
pipeline files and the tester's coverage, ``_app`` is the Starlette app,
``_serve`` runs it under Hypercorn. Templates and static files ship in the
package: the pages load nothing from the network. See ``docs/ui.md``.

Example::

    import anyio
    from stageflow.store import open_store
    from stageflow.ui import InspectorConfig, create_app, serve

    app = create_app(InspectorConfig(store=open_store("sqlite:///sessions.db")))
    anyio.run(serve, app, "127.0.0.1", 8080, backend="trio")
"""

from __future__ import annotations

from stageflow.ui._app import InspectorConfig, create_app
from stageflow.ui._errors import (
    ActionsDisabledError,
    InputRefusedError,
    InspectorError,
    SnapshotLoadError,
)
from stageflow.ui._serve import serve

__all__ = [
    "ActionsDisabledError",
    "InputRefusedError",
    "InspectorConfig",
    "InspectorError",
    "SnapshotLoadError",
    "create_app",
    "serve",
]
