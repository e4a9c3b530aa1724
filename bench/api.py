"""Benchmark: authenticated reads and job creation through ONE API process, under ``wrk``.

Runs on its own::

    .venv/bin/python bench/api.py [--connections 20] [--duration 10] [--json PATH]

Needs ``wrk`` (Debian: ``apt-get install -y wrk``). It starts a private NATS server, a fresh
database on the local PostgreSQL (or ``RPA_DB_URL``'s server) built from the migrations, seeds an
admin, 200 robots in a group, a published process and 200 jobs, and starts ONE API process
(``python -m rpa_api serve``: one worker). Then ``wrk`` drives, one after the other, each for
``--duration`` seconds over ``--connections`` keep-alive connections:

- ``GET /api/v1/auth/me`` (an access token, as every SPA call carries);
- ``GET /api/v1/jobs?limit=50`` and ``GET /api/v1/robots?limit=50`` (a full page each);
- ``POST /api/v1/jobs`` (a job for the group; no scheduler runs, so they stay Pending);
- ``GET /healthz`` of the same process (no authentication, no database);
- the floor, in the same run: a bare uvicorn app (one process, the same uvicorn options, a plain
  ASGI callable answering a small JSON body).

The token reaches ``wrk`` through its environment and a Lua script, never its command line. A run
with any non-2xx answer or socket error is reported as such. ``--json`` writes ``me_rps``,
``list_rps`` (the slower of the two list pages), ``create_rps``, ``p99_ms`` (the worst p99 of the
three reads) and ``floor_rps``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from harness.infra import (
    Services,
    bench_settings,
    cpu_seconds,
    free_port,
    fresh_database,
    peer,
    print_table,
    ratio,
    seed,
    service_env,
    start_nats,
    start_service,
    wait_port,
)

WRK_SCRIPT = r"""
-- Set by the benchmark: the method, the body, and the token (from the environment).
local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end
wrk.method = os.getenv("BENCH_METHOD") or "GET"
local body = os.getenv("BENCH_BODY")
if body and body ~= "" then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT {\"requests\": %d, \"duration_us\": %d, \"p50_us\": %d, \"p99_us\": %d, " ..
    "\"max_us\": %d, \"connect\": %d, \"read\": %d, \"write\": %d, \"status\": %d, \"timeout\": %d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


@dataclass
class Load:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_pct: float
    """The server process's CPU over the run, % of one core."""

    @property
    def per_core(self) -> float:
        """Requests per CPU-second of the server process: what one core would serve if it had one
        to itself (other work on the machine changes this far less than it changes ``rps``)."""
        return self.rps / (self.cpu_pct / 100) if self.cpu_pct else float("nan")

    @property
    def row(self) -> tuple[str, str]:
        mark = f", {self.errors} errors" if self.errors else ""
        return (
            self.name,
            f"{self.rps:,.0f}/s p50 {self.p50_ms:.1f} p99 {self.p99_ms:.1f}, "
            f"CPU {self.cpu_pct:.0f}%, {self.per_core:,.0f}/CPU-s{mark}",
        )


async def wrk(
    name: str,
    url: str,
    args: argparse.Namespace,
    *,
    pid: int,
    token: str = "",
    method: str = "GET",
    body: dict[str, Any] | None = None,
) -> Load:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT)
        script = f.name
    env = {
        **os.environ,
        "BENCH_TOKEN": token,
        "BENCH_METHOD": method,
        "BENCH_BODY": json.dumps(body) if body else "",
    }
    argv = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{args.duration:g}s",
        "--timeout",
        "10s",
        "-s",
        script,
        url,
    ]
    try:
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        out, _ = await proc.communicate()
        cpu_pct = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0) * 100
    finally:
        os.unlink(script)
    text = out.decode()
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed on {name}:\n{text}")
    r = json.loads(line.removeprefix("BENCH_RESULT "))
    errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    return Load(
        name=name,
        rps=r["requests"] / (r["duration_us"] / 1e6),
        p50_ms=r["p50_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        errors=errors,
        cpu_pct=cpu_pct,
    )


async def seed_jobs(api: str, token: str, body: dict[str, Any], count: int) -> None:
    """Jobs through the API itself, so that a page of jobs is a full one."""
    async with httpx.AsyncClient(base_url=api, headers={"Authorization": f"Bearer {token}"}) as client:
        for _ in range(count):
            r = await client.post("/api/v1/jobs", json=body)
            r.raise_for_status()


async def check(api: str, token: str, path: str, want: int) -> None:
    """Before loading a path: it answers 200 with a page of ``want`` items (or an object)."""
    async with httpx.AsyncClient(base_url=api, headers={"Authorization": f"Bearer {token}"}) as client:
        r = await client.get(path)
    if r.status_code != 200:
        raise RuntimeError(f"GET {path} answered {r.status_code}: {r.text[:300]}")
    data = r.json()
    items = data.get("items") if isinstance(data, dict) else data
    if want and (not isinstance(items, list) or len(items) != want):
        raise RuntimeError(f"GET {path}: expected a page of {want}, got {str(data)[:300]}")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    services = Services()
    loads: dict[str, Load] = {}
    try:
        nats_url = await start_nats(services)
        async with fresh_database("api") as db_url:
            settings = bench_settings(db_url, nats_url)
            s = await seed(settings, 200)
            port = free_port()
            env = service_env(db_url, nats_url, RPA_API_PORT=str(port))
            pid = (await start_service(services, "api", "rpa_api", env, port)).pid
            api = f"http://127.0.0.1:{port}"
            job = {"process_id": str(s.process_id), "robot_group_id": str(s.group_id)}
            await seed_jobs(api, s.token, job, 200)
            await check(api, s.token, "/api/v1/auth/me", 0)
            await check(api, s.token, "/api/v1/jobs?limit=50", 50)
            await check(api, s.token, "/api/v1/robots?limit=50", 50)
            # A short warm-up of each path (imports, caches, the pool's connections), not measured.
            warm = argparse.Namespace(**{**vars(args), "duration": 2})
            for path in ("/api/v1/auth/me", "/api/v1/jobs?limit=50", "/api/v1/robots?limit=50"):
                await wrk("warm-up", api + path, warm, pid=pid, token=s.token)
            for name, path in (
                ("GET /auth/me", "/api/v1/auth/me"),
                ("GET /jobs?limit=50", "/api/v1/jobs?limit=50"),
                ("GET /robots?limit=50", "/api/v1/robots?limit=50"),
            ):
                loads[name] = await wrk(name, api + path, args, pid=pid, token=s.token)
            loads["POST /jobs"] = await wrk(
                "POST /jobs", api + "/api/v1/jobs", args, pid=pid, token=s.token, method="POST", body=job
            )
            loads["GET /healthz"] = await wrk("GET /healthz", api + "/healthz", args, pid=pid)
            services.stop("api")
        floor_port = free_port()
        floor_pid = peer(services, "floor", "floor-asgi", str(floor_port)).pid
        await wait_port(floor_port)
        floor_url = f"http://127.0.0.1:{floor_port}/"
        await wrk("warm-up", floor_url, warm, pid=floor_pid)
        loads["floor: bare uvicorn"] = await wrk("floor: bare uvicorn", floor_url, args, pid=floor_pid)
    finally:
        services.stop()

    reads = [loads["GET /auth/me"], loads["GET /jobs?limit=50"], loads["GET /robots?limit=50"]]
    floor = loads["floor: bare uvicorn"]
    report = {
        "me_rps": round(loads["GET /auth/me"].rps, 1),
        "list_rps": round(min(loads["GET /jobs?limit=50"].rps, loads["GET /robots?limit=50"].rps), 1),
        "create_rps": round(loads["POST /jobs"].rps, 1),
        "p99_ms": round(max(r.p99_ms for r in reads), 2),
        "floor_rps": round(floor.rps, 1),
    }
    rows = [load.row for load in loads.values()]
    rows += [
        (
            f"ratio floor / {name} (req/s; req/CPU-s)",
            f"{ratio(floor.rps, load.rps)}; {ratio(floor.per_core, load.per_core)}",
        )
        for name, load in loads.items()
        if load is not floor
    ]
    errors = sum(load.errors for load in loads.values())
    rows.append(("non-2xx answers and socket errors, all runs", errors))
    print_table(
        f"API benchmark: one API process, wrk -t{args.threads} -c{args.connections} "
        f"-d{args.duration:g}s per path (requests/s, latency in ms)",
        rows,
    )
    print(
        "goal: >= 1,000 authenticated reads/s and >= 600 list pages/s per API process at p99 <= 50 ms;"
        f" logs in {services.log_dir}"
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=20, help="wrk keep-alive connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (the machine has 2 cores)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per path")
    parser.add_argument("--json", type=str, default=None, help="also write the summary as JSON here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/api.py needs wrk: apt-get install -y wrk (Debian's package)")
    report = asyncio.run(run(args))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
