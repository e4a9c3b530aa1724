"""``rpa-robot``: the reference robot.

    rpa-robot run --gateway ws://127.0.0.1:8001/robot/v1 [--unattended] [--exit-after-job]
                  [--cache-dir DIR] [--state-dir DIR] [--door SOCKET] [--no-screenshot-on-failure]
                  [--log-buffer-lines N]
    rpa-robot run-local PATH_OR_ZIP [--input JSON]
    rpa-robot start-process NAME [--input JSON] [--gateway URL]
    rpa-robot start-trigger NAME [--input JSON] [--gateway URL]

The robot key comes from the environment (``RPA_ROBOT_KEY``), from stdin (``--key-stdin``), or,
for a robot started inside a terminal session, from its coordinator's door (``--door SOCKET``: a
Unix socket that answers the session's OS user once with its key and gateway URL); never from the
command line, where any user of the machine could read it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from rpa_robot.client import LOG_BUFFER_LINES, Options, RobotClient, request_job, say
from rpa_robot.runner import PackageError, ScriptRun, extract, read_manifest

DEFAULT_GATEWAY = "ws://127.0.0.1:8001/robot/v1"
HOME = Path(os.environ.get("RPA_ROBOT_HOME", Path.home() / ".rpa-robot"))


def _read_key(from_stdin: bool) -> str:
    key = sys.stdin.readline().strip() if from_stdin else os.environ.get("RPA_ROBOT_KEY", "").strip()
    if not key:
        say("no robot key: set RPA_ROBOT_KEY or pass it on stdin with --key-stdin")
        sys.exit(2)
    return key


def _input(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        say(f"--input is not valid JSON: {exc}")
        sys.exit(2)
    if not isinstance(value, dict):
        say("--input must be a JSON object")
        sys.exit(2)
    return value


async def _from_door(path: str) -> tuple[str, str]:
    """(robot key, gateway URL) from the coordinator's door; exits when it has none for us."""
    try:
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b'{"want": "session"}\n')
            await writer.drain()
            line = await reader.readline()
            writer.close()
    except (OSError, TimeoutError) as exc:
        say(f"the coordinator's door {path} did not answer: {exc}")
        sys.exit(2)
    try:
        answer = json.loads(line)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not answer.get("robot_key") or not answer.get("gateway"):
        error = answer.get("error") if isinstance(answer, dict) else "unreadable answer"
        say(f"the coordinator's door gave no key: {error}")
        sys.exit(2)
    return str(answer["robot_key"]), str(answer["gateway"])


async def _run(args: argparse.Namespace) -> int:
    if args.door:
        key, gateway = await _from_door(args.door)
    else:
        key, gateway = _read_key(args.key_stdin), args.gateway
    client = RobotClient(
        Options(
            gateway=gateway,
            key=key,
            state_dir=Path(args.state_dir),
            cache_dir=Path(args.cache_dir),
            unattended=args.unattended,
            exit_after_job=args.exit_after_job,
            max_backoff_s=args.max_backoff_s,
            screenshot_on_failure=args.screenshot_on_failure,
            log_buffer_lines=args.log_buffer_lines,
        )
    )
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: main.cancel() if main else None)
    try:
        return await client.run()
    except asyncio.CancelledError:
        say("stopping")
        return 0


def _prepare(source: Path, workdir: Path) -> dict[str, Any]:
    if source.is_dir():
        manifest = read_manifest(source)
        shutil.copytree(source, workdir)
        return manifest
    return extract(source, workdir)


async def _run_local(args: argparse.Namespace) -> int:
    """Run a package (folder or zip) right here, without the orchestrator."""
    source = Path(args.package)
    temp = Path(tempfile.mkdtemp(prefix="rpa-local-"))
    workdir = temp / "package"
    try:
        try:
            manifest = await asyncio.to_thread(_prepare, source, workdir)
        except (PackageError, OSError) as exc:
            say(str(exc))
            return 2
        input_args = dict(manifest.get("default_input") or {})
        input_args.update(_input(args.input))

        def show(entry: dict[str, Any]) -> None:
            fields = f" {json.dumps(entry['fields'])}" if entry.get("fields") else ""
            print(
                f"{entry['at']} {entry['level']:<8} {entry['message']}{fields}", file=sys.stderr, flush=True
            )

        run = ScriptRun(
            workdir=workdir,
            entry_point=manifest["entry_point"],
            input_args=input_args,
            sink=show,
            # Nothing uploads here: screenshots stay in ./rpa-screenshots (<id>.png and <id>.json).
            screenshot_dir=Path.cwd() / "rpa-screenshots",
        )
        try:
            await run.start()
        except PackageError as exc:
            say(str(exc))
            return 2
        loop = asyncio.get_running_loop()
        kills: set[asyncio.Task[None]] = set()

        def kill() -> None:
            kills.add(asyncio.ensure_future(run.kill()))

        def on_interrupt() -> None:
            # First Ctrl-C asks the script to stop; the second kills it.
            if run.stop_requested:
                kill()
            else:
                say("stop requested (Ctrl-C again to kill)")
                run.request_stop()

        loop.add_signal_handler(signal.SIGINT, on_interrupt)
        loop.add_signal_handler(signal.SIGTERM, kill)
        result = await run.wait()
        print(json.dumps({"status": result.status, "output": result.output, "error": result.error}))
        return 0 if result.status == "successful" else 1
    finally:
        shutil.rmtree(temp, ignore_errors=True)


async def _start_process(args: argparse.Namespace) -> int:
    job_id, error = await request_job(args.gateway, _read_key(args.key_stdin), args.name, _input(args.input))
    if error or not job_id:
        say(f"not started: {error}")
        return 1
    print(json.dumps({"job_id": job_id}))
    return 0


async def _start_trigger(args: argparse.Namespace) -> int:
    job_id, error = await request_job(
        args.gateway, _read_key(args.key_stdin), None, _input(args.input), trigger_name=args.name
    )
    if error or not job_id:
        say(f"not started: {error}")
        return 1
    print(json.dumps({"job_id": job_id}))
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rpa-robot", description="Reference RPA robot")
    sub = parser.add_subparsers(dest="command", required=True)

    def connection_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--gateway", default=os.environ.get("RPA_ROBOT_GATEWAY", DEFAULT_GATEWAY))
        p.add_argument("--key-stdin", action="store_true", help="read the robot key from stdin")

    run = sub.add_parser("run", help="connect to the gateway and run the jobs it gives")
    connection_args(run)
    run.add_argument("--unattended", action="store_true", help="no person at this machine")
    run.add_argument("--exit-after-job", action="store_true", help="exit after one job (log off)")
    run.add_argument("--cache-dir", default=str(HOME / "cache"))
    run.add_argument("--state-dir", default=str(HOME / "state"))
    run.add_argument("--max-backoff-s", type=float, default=30.0, help="longest wait between reconnects")
    run.add_argument(
        "--no-screenshot-on-failure",
        dest="screenshot_on_failure",
        action="store_false",
        default=os.environ.get("RPA_ROBOT_SCREENSHOT_ON_FAILURE", "true").lower() not in ("0", "false", "no"),
        help="do not capture the desktop when a job fails (default: capture; env RPA_ROBOT_SCREENSHOT_ON_FAILURE)",
    )
    run.add_argument(
        "--log-buffer-lines",
        type=int,
        default=LOG_BUFFER_LINES,
        help="unacknowledged log lines held before scripts' log calls block (backpressure)",
    )
    run.add_argument(
        "--door", help="take the key and gateway URL from the coordinator's Unix socket (terminal sessions)"
    )

    local = sub.add_parser("run-local", help="run a package folder or zip here, offline")
    local.add_argument("package")
    local.add_argument("--input", help="input arguments as a JSON object")

    start = sub.add_parser("start-process", help="ask the orchestrator to run a process on this robot")
    connection_args(start)
    start.add_argument("name")
    start.add_argument("--input", help="input arguments as a JSON object")

    fire = sub.add_parser(
        "start-trigger", help="fire a robot command trigger (it decides process and target)"
    )
    connection_args(fire)
    fire.add_argument("name")
    fire.add_argument("--input", help="input arguments as a JSON object, over the trigger's own")

    args = parser.parse_args(argv)
    handler = {
        "run": _run,
        "run-local": _run_local,
        "start-process": _start_process,
        "start-trigger": _start_trigger,
    }[args.command]
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(handler(args)))


if __name__ == "__main__":
    main()
