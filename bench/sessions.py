"""Benchmark: a job for a disconnected unattended robot, through a real RDP session, to its robot running it.

Runs on its own, as root (OS accounts, xrdp sessions)::

    .venv/bin/python bench/sessions.py [--jobs 20] [--json PATH]

It starts a real xrdp server on loopback (``tests/rdp/xrdp_server.py``: private configuration,
TLS, a certificate made for the run and pinned by fingerprint; an Xvfb display for the client),
a private NATS server, a fresh database built from the migrations, and the robot gateway, the
scheduler and the coordinator (``rdp`` driver) as real processes. Two OS accounts are bound to
two unattended robots; jobs are created two at a time (one per robot, as the API creates them:
``create_job`` then ``JOB_CREATED``), and the next two once both sessions ended.

Latency = the job's ``Running`` transition (the robot inside its session reported it running) -
the job's creation, both stamped by the services on this machine's clock. It covers dispatch,
the sealed ``OpenSession``, the RDP log-on with xfreerdp, xrdp starting an Xorg session and the
robot in it, the robot taking its key at the door, connecting to the gateway and starting the job.

The floor, in the same run, on the same server, two at a time: bare ``xfreerdp`` (password on
stdin) until a trivial program in the session runs (it writes the time to a file). Goal:
p50 <= floor p50 + 1.5 s. ``--json`` writes p50/p95, the floor's p50/p95 and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import nats
import sqlalchemy as sa
from harness.infra import (
    ROOT,
    Services,
    bench_settings,
    free_port,
    fresh_database,
    percentile,
    print_table,
    ratio,
    seed_account,
    service_env,
    start_nats,
    start_service,
)

from rpa_common.db.engine import create_engine, session_factory
from rpa_common.db.uow import run_in_transaction
from rpa_common.jobflow import Actor, create_job, created_message
from rpa_common.models import (
    Job,
    JobEvent,
    Process,
    Robot,
    TerminalServer,
    TerminalSession,
    UnattendedAccount,
)
from rpa_common.models.enums import JobSource, JobState, RobotRole, RobotStatus, SessionState
from rpa_common.nats import subjects
from rpa_common.secrets import encrypt_unattended_password
from rpa_common.security import make_key
from tests.rdp.xrdp_server import Unavailable, XrdpServer, xrdp_server
from tests.support import add_current_version, package_of

GOAL_S = 1.5


async def _seed(settings: Any, server: XrdpServer, logins: list[tuple[str, str]]) -> dict[str, Any]:
    """Account, examples/hello as a process, a coordinator robot (with its key), the terminal
    server, and per OS account an unattended robot bound to it."""
    account = await seed_account(settings)
    folder = ROOT / "examples" / "hello"
    data, manifest = package_of(folder)
    process_id, version_id, server_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    coordinator_id, coordinator_key = uuid.uuid4(), make_key("rbk")
    robots = [(uuid.uuid4(), login, password) for login, password in logins]
    engine = create_engine(settings, "bench", pool_size=1)
    try:

        async def work(session: Any) -> None:
            session.add(Process(id=process_id, account_id=account.account_id, name="hello"))
            await session.flush()
            await add_current_version(
                session,
                account_id=account.account_id,
                process_id=process_id,
                version_id=version_id,
                version="1.0.0",
                data=data,
                manifest=manifest,
            )
            for rid, name, role, key in [
                (coordinator_id, "coordinator", RobotRole.COORDINATOR, coordinator_key),
                *((rid, f"bot-{login}", RobotRole.UNATTENDED, make_key("rbk")) for rid, login, _ in robots),
            ]:
                session.add(
                    Robot(
                        id=rid,
                        account_id=account.account_id,
                        name=name,
                        role=role,
                        key_prefix=key.prefix,
                        key_hash=key.hash,
                        status=RobotStatus.DISCONNECTED,
                    )
                )
            await session.flush()
            session.add(
                TerminalServer(
                    id=server_id,
                    account_id=account.account_id,
                    name="loopback-xrdp",
                    hostname="127.0.0.1",
                    rdp_port=server.port,
                    cert_fingerprint=server.fingerprint,
                    shell_command=server.robot_shell(),
                    coordinator_id=coordinator_id,
                    max_sessions=len(robots),
                )
            )
            await session.flush()
            for rid, login, password in robots:
                session.add(
                    UnattendedAccount(
                        account_id=account.account_id,
                        terminal_server_id=server_id,
                        robot_id=rid,
                        login=login,
                        password_encrypted=encrypt_unattended_password(
                            settings, account.account_id, password
                        ),
                    )
                )

        await run_in_transaction(session_factory(engine), work)
    finally:
        await engine.dispose()
    return {
        "account_id": account.account_id,
        "process_id": process_id,
        "version_id": version_id,
        "coordinator_key": coordinator_key.full,
        "robots": [rid for rid, _, _ in robots],
    }


async def _round(settings: Any, sessions: Any, nc: Any, seeded: dict[str, Any]) -> list[dict[str, float]]:
    """One job per robot at once; per job, the seconds from its creation to its Running transition
    (``total``) and the stages: ``dispatch`` (created -> Starting, the OpenSession sent), ``log-on``
    (Starting -> the robot in the session took its key at the door), ``robot`` (-> Running: the robot
    connected to the gateway, got the job and the package, started the script)."""
    ids = [uuid.uuid4() for _ in seeded["robots"]]

    async def work(session: Any) -> list[Any]:
        return [
            await create_job(
                session,
                account_id=seeded["account_id"],
                process_id=seeded["process_id"],
                process_version_id=seeded["version_id"],
                source=JobSource.API,
                actor=Actor.system(),
                reason="bench",
                robot_id=rid,
                job_id=jid,
                input_args={"name": "bench", "count": 1},
            )
            for rid, jid in zip(seeded["robots"], ids, strict=True)
        ]

    jobs = await run_in_transaction(sessions, work)
    for job in jobs:
        await nc.publish(subjects.JOB_CREATED, created_message(job).encode())
    async with asyncio.timeout(120):
        while True:
            async with sessions() as session:
                states = (await session.scalars(sa.select(Job.state).where(Job.id.in_(ids)))).all()
                ended = (
                    await session.scalars(
                        sa.select(TerminalSession.state).where(TerminalSession.job_id.in_(ids))
                    )
                ).all()
            if all(s.is_final for s in states) and len(ended) == len(ids) and all(s.is_final for s in ended):
                break
            await asyncio.sleep(0.1)
    async with sessions() as session:
        rows = (
            await session.execute(
                sa.select(Job.id, Job.robot_id, Job.created_at, JobEvent.to_state, JobEvent.at)
                .join(JobEvent, JobEvent.job_id == Job.id)
                .where(Job.id.in_(ids), JobEvent.to_state.in_([JobState.STARTING, JobState.RUNNING]))
            )
        ).all()
        logged_on = dict(
            (
                await session.execute(
                    sa.select(TerminalSession.job_id, TerminalSession.opened_at).where(
                        TerminalSession.job_id.in_(ids)
                    )
                )
            ).all()
        )
        failed = (
            await session.execute(
                sa.select(Job.error).where(Job.id.in_(ids), Job.state != JobState.SUCCESSFUL)
            )
        ).all()
        bad_sessions = (
            await session.execute(
                sa.select(TerminalSession.reason).where(
                    TerminalSession.job_id.in_(ids), TerminalSession.state != SessionState.ENDED
                )
            )
        ).all()
    if failed or bad_sessions:
        raise RuntimeError(
            f"jobs failed: {[r.error for r in failed]}, sessions: {[r.reason for r in bad_sessions]}"
        )
    out = []
    for jid in ids:
        events = {r.to_state: r.at for r in rows if r.id == jid}
        created = next(r.created_at for r in rows if r.id == jid)
        out.append(
            {
                "total": (events[JobState.RUNNING] - created).total_seconds(),
                "dispatch": (events[JobState.STARTING] - created).total_seconds(),
                "log-on": (logged_on[jid] - events[JobState.STARTING]).total_seconds(),
                "robot": (events[JobState.RUNNING] - logged_on[jid]).total_seconds(),
            }
        )
    return out


async def _floor_one(server: XrdpServer, login: str, password: str, marker_dir: Path) -> float:
    """Bare xfreerdp: seconds from its start to a program running in the session."""
    marker = marker_dir / f"{login}-{uuid.uuid4().hex[:6]}"
    home = marker_dir / f"home-{uuid.uuid4().hex[:6]}"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPA_")}
    env.update(HOME=str(home), DISPLAY=server.display)
    program = f'sh -c "date +%s.%N > {marker}; sleep 2"'
    started = time.time()
    proc = await asyncio.create_subprocess_exec(
        "xfreerdp",
        f"/v:127.0.0.1:{server.port}",
        f"/u:{login}",
        "/from-stdin:force",
        "/sec:tls",
        f"/cert:deny,fingerprint:{server.fingerprint}",
        f"/shell:{program}",
        "/log-level:ERROR",
        "-clipboard",
        "/audio-mode:2",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )
    assert proc.stdin is not None
    proc.stdin.write(password.encode() + b"\n")
    await proc.stdin.drain()
    proc.stdin.close()
    try:
        async with asyncio.timeout(60):
            while not marker.exists() or not marker.read_text().strip():  # noqa: ASYNC110 - another process
                await asyncio.sleep(0.02)
            ran_at = float(marker.read_text().strip())
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return ran_at - started


async def _floor(server: XrdpServer, logins: list[tuple[str, str]], rounds: int) -> list[float]:
    marker_dir = server.root / "floor"
    marker_dir.mkdir(exist_ok=True)
    marker_dir.chmod(0o777)
    out: list[float] = []
    for _ in range(rounds):
        out += await asyncio.gather(*(_floor_one(server, login, pw, marker_dir) for login, pw in logins))
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    services = Services()
    logins = [(f"rpabench{i}", "") for i in range(2)]
    try:
        with xrdp_server() as server:
            logins = [(login, server.account(login)) for login, _ in logins]
            async with fresh_database("sessions") as db_url:
                nats_url = await start_nats(services)
                settings = bench_settings(db_url, nats_url)
                seeded = await _seed(settings, server, logins)
                ports = {name: free_port() for name in ("gateway", "scheduler", "coordinator")}
                gateway = f"ws://127.0.0.1:{ports['gateway']}/robot/v1"
                common = {"RPA_GATEWAY_PUBLIC_URL": gateway, "RPA_ENVIRONMENT": "test"}
                await start_service(
                    services,
                    "gateway",
                    "rpa_gateway",
                    service_env(db_url, nats_url, RPA_GATEWAY_PORT=str(ports["gateway"]), **common),
                    ports["gateway"],
                )
                await start_service(
                    services,
                    "scheduler",
                    "rpa_scheduler",
                    service_env(db_url, nats_url, RPA_SCHEDULER_PORT=str(ports["scheduler"]), **common),
                    ports["scheduler"],
                )
                work = Path(services.log_dir) / "coordinator"
                await start_service(
                    services,
                    "coordinator",
                    "rpa_coordinator",
                    service_env(
                        db_url,
                        nats_url,
                        RPA_COORDINATOR_PORT=str(ports["coordinator"]),
                        RPA_COORDINATOR_KEY=seeded["coordinator_key"],
                        RPA_COORDINATOR_DRIVER="rdp",
                        RPA_COORDINATOR_DISPLAY=server.display,
                        RPA_COORDINATOR_DOOR=str(server.door_dir / "bench.sock"),
                        RPA_COORDINATOR_WORK_DIR=str(work),
                        RPA_COORDINATOR_ROBOT_SHELL=server.robot_shell(),
                        **common,
                    ),
                    ports["coordinator"],
                )
                engine = create_engine(settings, "bench", pool_size=2)
                nc = await nats.connect(nats_url)
                stages: list[dict[str, float]] = []
                try:
                    rounds = max(1, args.jobs // len(logins))
                    for _ in range(rounds):
                        stages += await _round(settings, session_factory(engine), nc, seeded)
                finally:
                    await nc.drain()
                    await engine.dispose()
                for name in ("coordinator", "scheduler", "gateway"):
                    services.stop(name)
                floor = await _floor(server, logins, rounds)
    finally:
        services.stop()
    latencies = [s["total"] for s in stages]
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    f50, f95 = percentile(floor, 50), percentile(floor, 95)
    report = {
        "jobs": len(latencies),
        "accounts_at_once": len(logins),
        "p50_s": round(p50, 3),
        "p95_s": round(p95, 3),
        "floor_p50_s": round(f50, 3),
        "floor_p95_s": round(f95, 3),
        "p50_over_floor_s": round(p50 - f50, 3),
        "goal_met": p50 <= f50 + GOAL_S,
    }
    print_table(
        f"Session benchmark: {len(latencies)} jobs through real xrdp sessions, {len(logins)} accounts at once",
        [
            ("jobs run", len(latencies)),
            ("p50 job created -> running (s)", report["p50_s"]),
            ("p95 job created -> running (s)", report["p95_s"]),
            ("max (s)", round(max(latencies), 3)),
            *(
                (f"  stage p50: {name} (s)", round(percentile([s[name] for s in stages], 50), 3))
                for name in ("dispatch", "log-on", "robot")
            ),
            ("floor: bare xfreerdp log-ons", len(floor)),
            ("floor: p50 log-on -> program runs (s)", report["floor_p50_s"]),
            ("floor: p95 (s)", report["floor_p95_s"]),
            ("p50 - floor p50 (s)", report["p50_over_floor_s"]),
            ("ratio p50 / floor p50", ratio(p50, f50)),
            ("ratio p95 / floor p95", ratio(p95, f95)),
        ],
    )
    print(f"goal: p50 <= floor p50 + {GOAL_S} s: {'met' if report['goal_met'] else 'NOT met'}")
    print(f"service logs in {services.log_dir}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20, help="jobs in all (two at a time)")
    parser.add_argument("--json", type=str, default=None, help="also write the summary as JSON here")
    args = parser.parse_args()
    try:
        report = asyncio.run(run(args))
    except Unavailable as exc:
        # `make bench` runs every benchmark: say loudly why this one did not run, and go on.
        print(f"!!! bench/sessions.py SKIPPED: this machine cannot run xrdp: {exc} !!!", file=sys.stderr)
        return
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
