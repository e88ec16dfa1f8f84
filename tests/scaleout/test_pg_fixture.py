"""The PostgreSQL fixture says why it cannot start a server (then the suite skips or fails)."""

from __future__ import annotations

import glob
import shutil
import subprocess

import pg_server
import pytest


def test_missing_server_binaries_name_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(pg_server.DSN_ENV, raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(glob, "glob", lambda pattern: [])
    expected = pytest.raises(pg_server.PostgresUnavailable, match=r"apt-get install postgresql")
    with expected, pg_server.running_postgres():
        pass


def test_a_given_dsn_is_used_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pg_server.DSN_ENV, "postgresql://u@h/db")
    monkeypatch.setattr(subprocess, "run", None)  # nothing is started
    with pg_server.running_postgres() as dsn:
        assert dsn == "postgresql://u@h/db"
