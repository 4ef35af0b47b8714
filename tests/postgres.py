"""A throwaway PostgreSQL cluster for tests, run from the distribution's server binaries.

Each cluster lives in its own temporary directory, listens on a free loopback port and trusts every
local connection; stop() (or the interpreter's exit) shuts it down and deletes the directory.
Durability is switched off: the data dies with the test session anyway.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

INSTALL_HINT = "install Debian's postgresql package (apt-get install postgresql) or run .ci/setup"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
# A Unix socket's path must fit in sun_path (108 bytes with the terminating NUL).
MAX_SOCKET_PATH = 107
SERVER_SETTINGS = {"listen_addresses": "127.0.0.1", "max_connections": "200"}
#: For tests: commits not forced to disk. A benchmark keeps Postgres's durable defaults instead.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class PostgresUnavailable(RuntimeError):
    """No usable server binaries, or the server would not start."""


def libpq_url(url: str) -> str:
    """The URL without SQLAlchemy's driver suffix (postgresql+psycopg:// -> postgresql://), for libpq."""
    return re.sub(r"^postgres(?:ql)?\+\w+://", "postgresql://", url)


def find_bindir() -> Path:
    """The directory holding initdb and postgres: pg_config's, else the newest Debian version's."""
    candidates: list[Path] = []
    if shutil.which("pg_config"):
        # Debian's pg_config may come from libpq-dev alone and name a server version that is absent.
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True, timeout=10)
            candidates.append(Path(out.stdout.strip()))
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted((Path(p) for p in versions), key=_version_key, reverse=True)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    raise PostgresUnavailable(f"no PostgreSQL server binaries (initdb, postgres) found: {INSTALL_HINT}")


def _version_key(bindir: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name)) or (0,)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _reachable_by_others(path: Path) -> bool:
    """Whether another user can traverse every directory down to path (TMPDIR may sit under a 0700 home)."""
    return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents])


class PostgresCluster:
    """One postmaster on 127.0.0.1 with trust authentication; superuser `postgres`.

    When run as root the cluster belongs to the `postgres` OS user, since initdb and postgres refuse
    root. The server gets SIGINT (fast shutdown) if the thread that started it dies without stop(),
    e.g. when the test process is killed: create the cluster in a thread that outlives its use.
    """

    def __init__(self, bindir: Path | None = None, *, durable: bool = False) -> None:
        self.bindir = bindir or find_bindir()
        self._settings = SERVER_SETTINGS if durable else {**SERVER_SETTINGS, **FAST_SETTINGS}
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopped = False
        self.port = 0
        self._as_user = self._os_user()
        parent = Path(tempfile.gettempdir())
        if self._as_user and not _reachable_by_others(parent):
            parent = Path("/tmp")
        self.root = Path(tempfile.mkdtemp(prefix="pgtest-", dir=parent))
        atexit.register(self.stop)
        try:
            if self._as_user:
                # mkdtemp makes the directory 0700: the cluster's owner must have it, not root.
                os.chown(self.root, self._as_user["uid"], self._as_user["gid"])
            self._initdb()
            self._start()
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        """The `postgres` maintenance database's URL."""
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{quote(name, safe='')}"

    def create_database(self, name: str) -> str:
        """Creates an empty database and returns its postgresql:// URL."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.database_url(name)

    def drop_database(self, name: str) -> None:
        """Drops a database, disconnecting whoever still uses it (a test's leftover pool)."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def stop(self) -> None:
        """Fast shutdown, then removes the cluster's directory. Safe to call more than once."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is not None:
            _shut_down(proc)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def _log(self) -> Path:
        return self.root / "server.log"

    @staticmethod
    def _os_user() -> dict[str, int] | None:
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable(
                f"running as root, but there is no `postgres` OS user to own the cluster: {INSTALL_HINT}"
            ) from None
        return {"uid": entry.pw_uid, "gid": entry.pw_gid}

    def _child_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"cwd": self.root, "stdin": subprocess.DEVNULL}
        if self._as_user:
            options.update(user=self._as_user["uid"], group=self._as_user["gid"], extra_groups=[])
        return options

    def _initdb(self) -> None:
        command = [
            str(self.bindir / "initdb"),
            "--pgdata",
            str(self.root / "data"),
            "--auth=trust",
            "--username=postgres",
            "--encoding=UTF8",
            "--locale=C",  # exists everywhere, whatever LANG says
            "--no-sync",
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, **self._child_options())
        if done.returncode != 0:
            raise PostgresUnavailable(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def _start(self) -> None:
        # The port is free when chosen but may be taken before the server binds it: try a few.
        for _ in range(5):
            self.port = _free_port()
            if self._start_on(self.port):
                return
        raise PostgresUnavailable(f"no free port for PostgreSQL after 5 tries:\n{self._read_log()}")

    def _start_on(self, port: int) -> bool:
        """Starts the server on port and waits until it takes connections; False if the port was taken."""
        socket_dir = str(self.root)
        if len(socket_dir) + len(f"/.s.PGSQL.{port}") > MAX_SOCKET_PATH:
            socket_dir = ""  # no Unix socket: tests connect over TCP
        command = [str(self.bindir / "postgres"), "-D", str(self.root / "data"), "-p", str(port), "-k", socket_dir]
        for name, value in self._settings.items():
            command += ["-c", f"{name}={value}"]
        if shutil.which("setpriv"):
            # Ties the server's life to this process: atexit does not run when pytest is killed.
            command = ["setpriv", "--pdeathsig", "INT", "--", *command]
        with open(self._log, "ab") as log:
            self._proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **self._child_options())
        proc = self._proc
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._proc = None
                log_text = self._read_log()
                if "could not bind" in log_text or "Address already in use" in log_text:
                    self._log.unlink(missing_ok=True)
                    return False
                raise PostgresUnavailable(f"PostgreSQL exited with {proc.returncode} while starting:\n{log_text}")
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        raise PostgresUnavailable(
            f"PostgreSQL did not accept connections within {START_TIMEOUT_S:.0f} s:\n{self._read_log()}"
        )

    def _read_log(self) -> str:
        try:
            return self._log.read_text(errors="replace")
        except OSError as error:
            return f"(no server log: {error})"


def _shut_down(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT is PostgreSQL's fast shutdown; escalate to immediate (SIGQUIT), then SIGKILL."""
    for sig, wait_s in ((signal.SIGINT, STOP_TIMEOUT_S), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait_s)
            return
