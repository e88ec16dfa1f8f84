"""A throwaway PostgreSQL server for the store tests (``initdb`` + ``pg_ctl``).

``STAGEFLOW_TEST_PG_DSN`` names a server to use instead. Without either,
:func:`start` raises :class:`PostgresUnavailable` with the reason; the
fixture turns that into a skip, or into a failure when
``STAGEFLOW_REQUIRE_POSTGRES=1`` (``.ci/run`` sets it).

PostgreSQL refuses to run as root: as root the server runs as ``nobody``
(``runuser``, or ``setuid`` in the child), in a temp dir chowned to it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REQUIRE_ENV = "STAGEFLOW_REQUIRE_POSTGRES"
DSN_ENV = "STAGEFLOW_TEST_PG_DSN"


class PostgresUnavailable(Exception):
    """No PostgreSQL server can be started here (the message says why)."""


def _bindir() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    if shutil.which("pg_config"):
        out = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, timeout=30, check=False
        )
        candidate = Path(out.stdout.strip())
        if (candidate / "pg_ctl").exists():
            return candidate
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    raise PostgresUnavailable(
        "no PostgreSQL server binaries (pg_ctl, initdb) on PATH or in /usr/lib/postgresql; "
        "install them (apt-get install postgresql) or set STAGEFLOW_TEST_PG_DSN"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _as_server_user() -> tuple[list[str], Callable[[], None] | None, int | None]:
    """(command prefix, preexec_fn, uid to chown to): drop root for the server."""
    if os.geteuid() != 0:
        return [], None, None
    user = pwd.getpwnam("nobody")
    if shutil.which("runuser"):
        return ["runuser", "-u", "nobody", "--"], None, user.pw_uid

    def drop() -> None:  # pragma: no cover - only without runuser
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    return [], drop, user.pw_uid


@contextmanager
def running_postgres() -> Iterator[str]:
    """Start a server on 127.0.0.1 on a free port; yield its DSN; stop it."""
    if os.environ.get(DSN_ENV):
        yield os.environ[DSN_ENV]
        return
    bindir = _bindir()
    prefix, preexec, uid = _as_server_user()
    root = Path(tempfile.mkdtemp(prefix="stageflow-pg-"))
    data = root / "data"
    try:
        if uid is not None:
            os.chown(root, uid, -1)
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}

        def run(*args: str, timeout: float = 60) -> None:
            done = subprocess.run(
                [*prefix, *args],
                capture_output=True,
                text=True,
                timeout=timeout,
                preexec_fn=preexec,
                env=env,
                cwd=root,
                check=False,
            )
            if done.returncode != 0:
                raise PostgresUnavailable(
                    f"{Path(args[0]).name} failed ({done.returncode}): "
                    f"{(done.stderr or done.stdout).strip()[-800:]}"
                )

        run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        port = _free_port()
        options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c synchronous_commit=off"
        run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w",
            "-t", "60", "start")  # fmt: skip
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)
