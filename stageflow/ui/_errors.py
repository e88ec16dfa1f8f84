"""The inspector's errors: a branch of the :class:`~stageflow.StageflowError` tree.

Each carries the HTTP status its page is served with; the message says
what, where and how to fix it, and is all the page shows (never a traceback)::

    StageflowError
    └── InspectorError              the inspector cannot show or do that
        ├── SnapshotLoadError       a snapshot file cannot be read or restored (422)
        ├── InputRefusedError       an input the session does not wait for or whose
        │                           payload its schema rejects; nothing was stored (422)
        └── ActionsDisabledError    sending or cancelling without --allow-actions (403)
"""

from __future__ import annotations

from stageflow import StageflowError

__all__ = ["ActionsDisabledError", "InputRefusedError", "InspectorError", "SnapshotLoadError"]


class InspectorError(StageflowError):
    """The inspector cannot show or do what was asked.

    Attributes:
        status_code: the HTTP status of the page that says so (400 unless given).
    """

    status_code = 400

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        if status_code is not None:
            self.status_code = status_code
        super().__init__(message)


class SnapshotLoadError(InspectorError):
    """A snapshot file is not JSON, or not a snapshot this stageflow can restore."""

    status_code = 422


class InputRefusedError(InspectorError):
    """An input was refused before it was stored: wrong type, bad JSON, or schema errors.

    Attributes:
        problems: each schema error, ``"$.path: message"``.
    """

    status_code = 422

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        self.problems = problems
        super().__init__(message)


class ActionsDisabledError(InspectorError):
    """Sending inputs and cancelling are off (start the inspector with ``--allow-actions``)."""

    status_code = 403
