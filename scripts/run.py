"""``make run``: the whole orchestrator on this machine.

Uses the database and NATS given in the environment (``RPA_DB_URL`` or ``RPA_DB_HOST``,
``RPA_NATS_URL``), else the embedded ones of ``scripts/devstack.py``; migrates the database,
creates the first account and admin user (``python -m rpa_api bootstrap``, idempotent), starts
the four services, waits until each answers ``/readyz`` and prints where they are. Ctrl-C or
SIGTERM stops the services gracefully (SIGTERM, then SIGKILL after a grace period) and then the
embedded servers, unless another process (a ``make test``) still holds them; data stays in ``.data/``.

    .venv/bin/python scripts/run.py [--skip coordinator] [--quiet]
    .venv/bin/python scripts/run.py --migrate-only
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import devstack  # a sibling script, not a package

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
LOG_DIR = devstack.DATA / "logs"
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 20.0
TAIL_LINES = 40
COLORS = ["36", "35", "33", "32"]


@dataclass
class Service:
    name: str
    module: str
    prefix: str  # RPA_<PREFIX>_HOST / _PORT
    default_port: int
    proc: subprocess.Popen[bytes] | None = None
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))
    reader: threading.Thread | None = None

    def port(self, env: dict[str, str]) -> int:
        return int(env.get(f"RPA_{self.prefix}_PORT") or self.default_port)

    def host(self, env: dict[str, str]) -> str:
        host = env.get(f"RPA_{self.prefix}_HOST") or "127.0.0.1"
        return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host

    def base_url(self, env: dict[str, str]) -> str:
        return f"http://{self.host(env)}:{self.port(env)}"

    @property
    def log_path(self) -> Path:
        return LOG_DIR / f"{self.name}.log"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


SERVICES = [
    Service("api", "rpa_api", "API", 8000),
    Service("gateway", "rpa_gateway", "GATEWAY", 8001),
    Service("scheduler", "rpa_scheduler", "SCHEDULER", 8002),
    Service("coordinator", "rpa_coordinator", "COORDINATOR", 8003),
]


class Stop(BaseException):
    """Raised in the main thread by SIGINT/SIGTERM: unwinds to the orderly shutdown."""


class Failed(Exception):
    """Startup or a service failed; the message is for the operator."""


_stopping = threading.Event()  # shutdown has begun: signals no longer unwind the main thread
_hurry = threading.Event()  # a second signal: skip the graceful wait


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _stopping.is_set():
        _hurry.set()
        return
    _stopping.set()
    raise Stop(signal.Signals(signum).name)


def _say(msg: str) -> None:
    print(f"[run] {msg}", file=sys.stderr, flush=True)


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url


def _port_free(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return False
    except OSError:
        return True


def _pump(service: Service, stream: IO[bytes], echo: bool, color: str) -> None:
    """Copy a service's output to its log file, its tail, and (prefixed) to the terminal."""
    tty = sys.stdout.isatty()
    label = f"{service.name:<11}|"
    label = f"\033[{color}m{label}\033[0m" if tty else label
    with open(service.log_path, "ab") as log:
        for raw in iter(stream.readline, b""):
            log.write(raw)
            log.flush()
            line = raw.decode(errors="replace").rstrip("\n")
            service.tail.append(line)
            if echo:
                sys.stdout.write(f"{label} {line}\n")
                sys.stdout.flush()


def _show_tail(service: Service) -> None:
    if service.reader:
        service.reader.join(timeout=2)
    code = service.proc.poll() if service.proc else None
    _say(f"{service.name} exited with {code}; last lines of {service.log_path.relative_to(ROOT)}:")
    for line in service.tail:
        print(f"    {line}", file=sys.stderr)
    sys.stderr.flush()


def _run_step(title: str, cmd: list[str], env: dict[str, str]) -> None:
    _say(title)
    result = subprocess.run(cmd, cwd=ROOT, env=env, check=False)
    if result.returncode != 0:
        raise Failed(f"{title} failed (exit {result.returncode}): {' '.join(cmd)}")


def embedded_needed(env: dict[str, str]) -> list[str]:
    """Which servers the environment does not give, so the embedded stack must."""
    needed = []
    if not (env.get("RPA_DB_URL") or env.get("RPA_DB_HOST")):
        needed.append("database")
    if not env.get("RPA_NATS_URL"):
        needed.append("nats")
    return needed


def start_embedded(env: dict[str, str], needed: list[str], pg_port: int, nats_port: int) -> None:
    if "database" in needed:
        env["RPA_DB_URL"] = devstack.ensure_postgres(pg_port, database="rpa")
    if "nats" in needed:
        env["RPA_NATS_URL"] = devstack.ensure_nats(nats_port)


def start_services(services: list[Service], env: dict[str, str], echo: bool) -> None:
    missing = [s.module for s in services if importlib.util.find_spec(f"{s.module}.__main__") is None]
    if missing:
        raise Failed(
            f"{', '.join(missing)}: no __main__ module (not written yet?); "
            f"run without it: --skip {','.join(m.removeprefix('rpa_') for m in missing)}"
        )
    busy = [
        f"{s.host(env)}:{s.port(env)} ({s.name})"
        for s in services
        if not _port_free(s.host(env), s.port(env))
    ]
    if busy:
        raise Failed(f"already in use: {', '.join(busy)} (another `make run`?)")
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    for i, service in enumerate(services):
        service.log_path.write_bytes(b"")
        service_env = dict(env)
        service_env[f"RPA_{service.prefix}_PORT"] = str(service.port(env))
        service.proc = subprocess.Popen(
            [PYTHON, "-m", service.module, "serve"],
            cwd=ROOT,
            env=service_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Own process group: the terminal's Ctrl-C reaches only us, and we stop the services
            # in order (services first, then the servers they need).
            start_new_session=True,
        )
        assert service.proc.stdout is not None
        service.reader = threading.Thread(
            target=_pump, args=(service, service.proc.stdout, echo, COLORS[i % len(COLORS)]), daemon=True
        )
        service.reader.start()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own http URL
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_ready(services: list[Service], env: dict[str, str], timeout: float = READY_TIMEOUT_S) -> None:
    pending = list(services)
    deadline = time.monotonic() + timeout
    while pending:
        for service in list(pending):
            if not service.running():
                _show_tail(service)
                raise Failed(f"{service.name} died while starting")
            if _ready(service.base_url(env) + "/readyz"):
                _say(f"{service.name} ready at {service.base_url(env)}")
                pending.remove(service)
        if pending and time.monotonic() > deadline:
            for service in pending:
                _show_tail(service)
            names = ", ".join(s.name for s in pending)
            raise Failed(f"not ready after {timeout:.0f}s: {names} (GET /readyz never answered 200)")
        if pending:
            time.sleep(0.3)


def banner(services: list[Service], env: dict[str, str], embedded: list[str]) -> None:
    by_name = {s.name: s for s in services}
    lines = ["", "RPA orchestrator is running (RPA_ENVIRONMENT=" + env.get("RPA_ENVIRONMENT", "") + "):"]
    if "api" in by_name:
        api = by_name["api"].base_url(env)
        lines += [f"  API          {api}", f"  Swagger UI   {api}/docs"]
    if "gateway" in by_name:
        gateway = by_name["gateway"].base_url(env).replace("http://", "ws://")
        lines.append(f"  Gateway      {gateway}/robot/v1   (robots connect here)")
    if "scheduler" in by_name:
        lines.append(f"  Scheduler    {by_name['scheduler'].base_url(env)}/readyz")
    if "coordinator" in by_name:
        idle = "" if env.get("RPA_COORDINATOR_KEY") else "   (no RPA_COORDINATOR_KEY: health checks only)"
        lines.append(f"  Coordinator  {by_name['coordinator'].base_url(env)}/readyz{idle}")
        if idle:
            lines.append(
                "               to open sessions: create a robot with role coordinator and run again with "
                "RPA_COORDINATOR_KEY=<its key>"
            )
    db = env.get("RPA_DB_URL") or f"{env.get('RPA_DB_DRIVER', 'postgresql')} at {env.get('RPA_DB_HOST')}"
    lines.append(
        f"  Database     {redact(db)}" + ("   (embedded, data in .data/pg)" if "database" in embedded else "")
    )
    lines.append(
        f"  NATS         {redact(env['RPA_NATS_URL'])}"
        + ("   (embedded, data in .data/nats)" if "nats" in embedded else "")
    )
    lines.append(f"  Logs         {LOG_DIR.relative_to(ROOT)}/<service>.log")
    lines += [
        "  Log in as `admin` (password: RPA_ADMIN_PASSWORD, or the one printed above at its creation).",
        "",
    ]
    lines.append("Ctrl-C stops everything; the data stays.")
    print("\n".join(lines), flush=True)


def stop_services(services: list[Service]) -> None:
    running = [s for s in services if s.running()]
    if not running:
        return
    _say(f"stopping {', '.join(s.name for s in running)}")
    for service in running:
        assert service.proc is not None
        service.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while any(s.running() for s in running) and time.monotonic() < deadline and not _hurry.is_set():
        time.sleep(0.1)
    for service in running:
        if service.running():
            assert service.proc is not None
            _say(f"{service.name} is still running: killing it")
            service.proc.kill()
        assert service.proc is not None
        service.proc.wait()
        if service.reader:
            service.reader.join(timeout=2)


def main() -> int:
    parser = argparse.ArgumentParser(description="Run the whole orchestrator on this machine.")
    parser.add_argument("--migrate-only", action="store_true", help="only migrate the database, then stop")
    parser.add_argument("--skip", default="", help="comma-separated services not to start, e.g. coordinator")
    parser.add_argument(
        "--quiet", action="store_true", help="service logs to .data/logs only, not the terminal"
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=READY_TIMEOUT_S, help="seconds each service has to get ready"
    )
    parser.add_argument("--pg-port", type=int, default=devstack.PG_PORT, help="embedded PostgreSQL port")
    parser.add_argument("--nats-port", type=int, default=devstack.NATS_PORT, help="embedded NATS port")
    args = parser.parse_args()
    skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    unknown = skip - {s.name for s in SERVICES}
    if unknown:
        parser.error(f"unknown service(s) {sorted(unknown)}; known: {[s.name for s in SERVICES]}")
    services = [s for s in SERVICES if s.name not in skip]

    env = dict(os.environ)
    env.setdefault("RPA_ENVIRONMENT", "development")
    env.setdefault("RPA_LOG_JSON", "false")  # a terminal is reading
    env.setdefault("PYTHONUNBUFFERED", "1")
    if not env.get("RPA_COORDINATOR_KEY"):
        # A coordinator needs the key of a coordinator robot, which a fresh database lacks: run it
        # for health checks only until one is given (see the banner).
        env.setdefault("RPA_COORDINATOR_REQUIRE_KEY", "false")

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    embedded = embedded_needed(env)
    if args.migrate_only and "nats" in embedded:
        embedded.remove("nats")  # migrations need the database only
    code = 0
    try:
        if embedded:
            # Before starting them: a concurrent `make test` finishing now must not stop them.
            devstack.hold()
        start_embedded(env, embedded, args.pg_port, args.nats_port)
        _run_step(
            "migrating the database (alembic upgrade head)",
            [str(VENV_BIN / "alembic"), "upgrade", "head"],
            env,
        )
        if args.migrate_only:
            return 0
        _run_step("bootstrapping the first account and user", [PYTHON, "-m", "rpa_api", "bootstrap"], env)
        start_services(services, env, echo=not args.quiet)
        wait_ready(services, env, args.ready_timeout)
        banner(services, env, embedded)
        while True:
            for service in services:
                if not service.running():
                    _show_tail(service)
                    raise Failed(f"{service.name} stopped unexpectedly")
            time.sleep(0.5)
    except Stop as stop:
        print(file=sys.stderr)
        _say(f"{stop.args[0] if stop.args else 'stop'} received")
    except (Failed, devstack.DevstackError) as exc:
        _say(f"error: {exc}")
        code = 1
    finally:
        # Shutdown must not be cut short by the next Ctrl-C; a second one only skips the grace wait.
        _stopping.set()
        stop_services(services)
        if embedded:
            devstack.release()
    if code == 0 and not args.migrate_only:
        _say("stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
