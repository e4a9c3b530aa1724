"""Pick the servers the test suite runs against and export them as ``RPA_TEST_*``.

A server answering on its standard local port is used as it is (PostgreSQL 127.0.0.1:5432 with
database ``test``, MariaDB 127.0.0.1:3306, NATS 127.0.0.1:4222); else PostgreSQL and NATS come
from the embedded stack (``scripts/devstack.py``) and MariaDB stays unset (the suite then skips
its MariaDB half loudly, or fails under ``CI=true``). Variables already set are kept.

    .venv/bin/python scripts/test_env.py              # prints `export` lines (servers stay up)
    .venv/bin/python scripts/test_env.py -- CMD ARGS  # runs CMD with them, then stops what it started
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import devstack  # a sibling script, not a package

LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/test"
LOCAL_MARIADB = "mariadb://root@127.0.0.1:3306/test"
LOCAL_NATS = "nats://127.0.0.1:4222"


def answers(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _say(msg: str) -> None:
    print(f"[test-env] {msg}", file=sys.stderr, flush=True)


def detect(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The ``RPA_TEST_*`` variables; starts the embedded servers that are needed."""
    environ = dict(os.environ if environ is None else environ)
    out: dict[str, str] = {}
    if environ.get("RPA_TEST_PG_URL"):
        out["RPA_TEST_PG_URL"] = environ["RPA_TEST_PG_URL"]
    elif answers(5432):
        out["RPA_TEST_PG_URL"] = LOCAL_PG
    else:
        _say("no PostgreSQL on 127.0.0.1:5432: using the embedded one")
        out["RPA_TEST_PG_URL"] = devstack.ensure_postgres(devstack.PG_PORT, database="postgres")
    if environ.get("RPA_TEST_MARIADB_URL"):
        out["RPA_TEST_MARIADB_URL"] = environ["RPA_TEST_MARIADB_URL"]
    elif answers(3306):
        out["RPA_TEST_MARIADB_URL"] = LOCAL_MARIADB
    else:
        _say("no MariaDB on 127.0.0.1:3306: the MariaDB half of the suite will be skipped")
    if environ.get("RPA_TEST_NATS_URL"):
        out["RPA_TEST_NATS_URL"] = environ["RPA_TEST_NATS_URL"]
    elif answers(4222):
        out["RPA_TEST_NATS_URL"] = LOCAL_NATS
    else:
        _say("no NATS on 127.0.0.1:4222: using the embedded one")
        out["RPA_TEST_NATS_URL"] = devstack.ensure_nats(devstack.NATS_PORT)
    return out


def _run(command: list[str], env: dict[str, str]) -> int:
    """Run ``command`` to its end: a Ctrl-C reaches it from the terminal (pytest then prints its
    summary), so we only wait; a SIGTERM sent to us is passed on."""
    proc = subprocess.Popen(command, env=env)
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    previous_term = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS: run CMD with the variables")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        try:
            variables = detect()
        except devstack.DevstackError as exc:
            sys.exit(f"[test-env] {exc}")
        for name, value in variables.items():
            print(f"export {name}={shlex.quote(value)}")
        return
    # Hold the embedded servers while CMD runs, so a concurrent `make run` keeps them and we stop
    # them afterwards only if nobody else uses them.
    devstack.hold()
    try:
        try:
            variables = detect()
        except devstack.DevstackError as exc:
            sys.exit(f"[test-env] {exc}")
        for name, value in variables.items():
            _say(f"{name}={value}")
        code = _run(command, {**os.environ, **variables})
    finally:
        devstack.release()
    sys.exit(code)


if __name__ == "__main__":
    main()
