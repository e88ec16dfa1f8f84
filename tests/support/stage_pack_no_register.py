"""A module named by an entry point that forgot its register function."""

from __future__ import annotations

STAGES = ("Upper",)
