"""A stage pack whose provider client is not installed: importing it fails."""

from __future__ import annotations

import stageflow_test_provider_sdk_that_is_not_installed  # type: ignore[import-not-found]  # noqa: F401


def register(registry: object) -> None:
    raise AssertionError("never reached: the import above fails")
