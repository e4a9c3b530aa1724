"""A browser follows the event stream from another origin (issue 13), in a real headless Chromium.

A page served from a second loopback origin (the test's own little HTTP server) logs in with
``POST /api/v1/auth/token``, lists jobs (``Authorization``: a CORS preflight), asks for an event
stream ticket and opens ``EventSource`` on ``GET /api/v1/events?ticket=``. Every process of the
product is real (API, scheduler with its outbox relay, gateway, a reference robot) and the API
allows the page's origin with ``RPA_CORS_ORIGINS``. The page reports what it sees to the server it
came from (``POST /report``) and takes orders from it (``GET /command``), as a SPA would follow a
user: the test creates a job, the page sees it go Pending -> Successful; the page closes its
stream, a second job runs meanwhile, the page reconnects (a new ticket, ``last_event_id`` = the last
id it saw, as docs/api-guide.md says) and gets every missed event: compared with the account's
events in the JetStream stream itself, nothing is missing and nothing comes twice.

Chromium is Debian's package (``.ci/run`` installs it). When it is missing the test installs it as
root (``apt-get install -y chromium``); otherwise it is skipped with the reason (a failure under
CI=true).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import subprocess  # nosec B404: Chromium and apt-get, fixed argv
import tempfile
import threading
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from rpa_common import events
from tests.conftest import IN_CI, PASSWORD, Tenant
from tests.e2e.conftest import Api, Child, Service, Stack, clean_env, eventually, history
from tests.events.jetstream import JetStreamServer, connect, stored
from tests.support import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    # Only loopback exists for this browser: none of its own background requests leaves the machine.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]


def chromium() -> str:
    """Debian's Chromium; installed here as root when missing, else a loud skip (a failure in CI)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        # One installer at a time (both databases' sessions may get here together).
        with open("/tmp/rpa-tests-chromium-install.lock", "w") as lock:  # nosec B108: a lock file
            fcntl.flock(lock, fcntl.LOCK_EX)
            if shutil.which("chromium") is None:
                env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
                for argv in (
                    ["apt-get", "install", "-y", "-q", "chromium"],
                    ["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "chromium"],
                ):
                    done = subprocess.run(argv, env=env, capture_output=True, timeout=900, check=False)  # nosec B603
                    if argv[1] == "install" and done.returncode == 0:
                        break
        found = shutil.which("chromium")
    if found is None:
        reason = (
            "SKIPPED LOUDLY: Debian's chromium is not installed and could not be installed "
            f"(root: {os.geteuid() == 0}); run `apt-get install -y chromium` as root"
        )
        if IN_CI:
            pytest.fail(reason)
        warnings.warn(reason, stacklevel=1)
        pytest.skip(reason)
    return found


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>rpa events</title></head>
<body><pre id="log"></pre>
<script id="cfg" type="application/json">__CONFIG__</script>
<script>
"use strict";
const cfg = JSON.parse(document.getElementById("cfg").textContent);
const api = cfg.api + "/api/v1";
let n = 0, token = null, source = null, lastId = null, phase = 0, done = 0;

function report(kind, body) {
  n += 1;
  return fetch("/report", {method: "POST", headers: {"Content-Type": "application/json"},
                           body: JSON.stringify({n, kind, phase, ...body})});
}

async function call(method, path, init) {
  const r = await fetch(api + path, {method, ...init,
                                     headers: {Authorization: "Bearer " + token, ...(init || {}).headers}});
  const body = await r.json();
  if (!r.ok) throw new Error(method + " " + path + ": " + r.status + " " + JSON.stringify(body));
  return body;
}

async function listJobs() {
  const page = await call("GET", "/jobs?limit=100");
  await report("jobs", {ids: page.items.map((j) => j.id)});
}

async function follow() {
  phase += 1;
  await listJobs();  // what a SPA shows first, then keeps up to date from the stream
  const {ticket} = await call("POST", "/events/ticket");
  const query = lastId === null ? "" : "&last_event_id=" + encodeURIComponent(lastId);
  source = new EventSource(api + "/events?ticket=" + encodeURIComponent(ticket) + query);
  source.onopen = () => report("open", {last: lastId});
  source.onerror = () => {
    // A ticket opens one stream only: no retry with a used one (the page reconnects itself).
    report("error", {state: source.readyState});
    source.close();
  };
  for (const type of cfg.types) {
    source.addEventListener(type, (e) => {
      lastId = e.lastEventId;
      report("event", {id: Number(e.lastEventId), type, data: JSON.parse(e.data)});
    });
  }
  source.addEventListener("reset", () => report("reset", {}));
}

async function obey() {
  const {seq, command} = await (await fetch("/command")).json();
  if (seq <= done) return;
  done = seq;
  if (command === "close") {
    source.close();
    await report("closed", {last: lastId});
  } else if (command === "reconnect") {
    await follow();
  }
}

async function main() {
  const r = await fetch(api + "/auth/token", {method: "POST", body: new URLSearchParams(
    {grant_type: "password", username: cfg.username, password: cfg.password})});
  const body = await r.json();
  if (!r.ok) throw new Error("login: " + r.status + " " + JSON.stringify(body));
  token = body.access_token;
  await report("login", {token_type: body.token_type});
  await follow();
  for (;;) {
    try { await obey(); } catch (e) { await report("failure", {message: String(e)}); }
    await new Promise((ok) => setTimeout(ok, 100));
  }
}
main().catch((e) => report("failure", {message: String(e && e.stack || e)}));
</script></body></html>
"""


@dataclass
class PageServer:
    """The page's origin: serves the page, collects its reports, hands out commands."""

    config: dict[str, Any]
    port: int = field(default_factory=free_port)
    reports: list[dict[str, Any]] = field(default_factory=list)
    command: tuple[int, str] = (0, "")
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def send(self, command: str) -> None:
        with self.lock:
            self.command = (self.command[0] + 1, command)

    def seen(self, kind: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            got = sorted(self.reports, key=lambda r: r["n"])
        return [r for r in got if kind is None or r["kind"] == kind]

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, ctype: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path == "/":
                    page = PAGE.replace("__CONFIG__", json.dumps(owner.config).replace("<", "\\u003c"))
                    self._answer(200, "text/html; charset=utf-8", page.encode())
                elif self.path == "/command":
                    with owner.lock:
                        seq, command = owner.command
                    self._answer(
                        200, "application/json", json.dumps({"seq": seq, "command": command}).encode()
                    )
                else:
                    self._answer(404, "text/plain", b"not found")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != "/report":
                    self._answer(404, "text/plain", b"not found")
                    return
                with owner.lock:
                    owner.reports.append(json.loads(body))
                self._answer(204, "text/plain", b"")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield
        finally:
            server.shutdown()
            server.server_close()


@dataclass
class Browsing:
    api: Api
    stack: Stack
    robot_id: str
    page: PageServer
    nats_url: str


@pytest.fixture
async def browsing(tenant: Tenant, stack: Stack, tmp_path: Path) -> AsyncIterator[Browsing]:
    browser = chromium()
    # A NATS of the test's own: the shared one's stream also holds other sessions' events, and an
    # outbox row's Nats-Msg-Id (its id in *its* database) may be one of theirs in the duplicate window.
    nats = JetStreamServer()
    nats.start()
    page = PageServer(config={})
    own = {"RPA_NATS_URL": nats.url}
    api_svc: Service = stack.service(
        "api", settings=own, RPA_API_WORKERS="1", RPA_CORS_ORIGINS=page.origin, RPA_EVENTS_HEARTBEAT_S="1"
    )
    scheduler, gateway = stack.service("scheduler", settings=own), stack.service("gateway", settings=own)
    try:
        for svc in (api_svc, scheduler, gateway):
            svc.start()
        # The machine may be busy: more time than Stack.start's default to come up.
        await asyncio.gather(
            *(asyncio.to_thread(svc.wait_ready, 120) for svc in (api_svc, scheduler, gateway))
        )
        # People's side through the API process (its NATS is the one the scheduler listens to).
        async with httpx.AsyncClient(base_url=api_svc.http_url, timeout=30) as client:
            api = Api(client, tenant)
            robot_id, key = await api.robot()
            stack.robot(gateway.ws_url, key)
            await api.wait_robot(robot_id, "Ready", stack=stack)
            page.config = {
                "api": api_svc.http_url,
                "username": tenant.admin_username,
                "password": PASSWORD,
                "types": list(events.EVENT_TYPES),
            }
            # The profile outside the test's folder: its own *.log files are no process's output.
            with (
                page.serving(),
                tempfile.TemporaryDirectory(prefix="rpa-chromium-", ignore_cleanup_errors=True) as profile,
            ):
                argv = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"{page.origin}/"]
                child = Child("chromium", argv, clean_env(HOME=profile), tmp_path / "chromium.log")
                stack.children.append(child)
                child.start()
                try:
                    yield Browsing(api, stack, robot_id, page, nats.url)
                finally:
                    child.stop(timeout=3)  # with its descendants, before its profile goes
    finally:
        await asyncio.to_thread(stack.close)
        nats.close()


async def until(b: Browsing, what: str, check: Any, timeout: float = 30) -> Any:
    """Wait for the page's reports to satisfy ``check``; a failure shows what the page reported."""

    async def probe() -> Any:
        failures = b.page.seen("failure")
        assert not failures, failures
        return check()

    try:
        return await eventually(probe, timeout, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\npage reports: {b.page.seen()}\n{b.stack.report()}") from None


def states_seen(reports: list[dict[str, Any]], job_id: str) -> list[str]:
    """The states of ``job_id`` the page saw, in order: its creation's, then each change's."""
    out = []
    for r in reports:
        if r["kind"] != "event" or r["data"]["object_id"] != job_id:
            continue
        data = r["data"]["data"]
        out.append(data["state"] if r["type"] == "job.created" else data["to_state"])
    return out


async def test_a_page_of_another_origin_follows_jobs_and_misses_nothing_across_a_reconnect(
    browsing: Browsing,
) -> None:
    b = browsing
    page = b.page
    login = await until(b, "the page logged in", lambda: page.seen("login"), timeout=60)
    assert login[0]["token_type"] == "bearer"
    await until(b, "the page's stream is open", lambda: page.seen("open"))
    assert page.seen("jobs")[0]["ids"] == []  # a new account: no job yet

    # A job created now goes Pending -> Successful on the real robot, and the page sees every step.
    first = await b.api.job("hello", robot=b.robot_id, input_args={"count": 1})
    job1 = await b.api.wait_job(first, stack=b.stack)
    assert job1["state"] == "Successful"
    states1 = [to for _, to in history(job1)]
    assert states1 == ["Pending", "Starting", "Running", "Successful"]
    await until(b, "job 1 Successful on the page", lambda: states_seen(page.seen(), first) == states1)

    # The page closes its stream; a second job runs while it is away.
    page.send("close")
    closed = await until(b, "the page closed its stream", lambda: page.seen("closed"))
    last_before = int(closed[0]["last"])
    second = await b.api.job("hello", robot=b.robot_id, input_args={"count": 1})
    job2 = await b.api.wait_job(second, stack=b.stack)
    assert job2["state"] == "Successful"
    states2 = [to for _, to in history(job2)]
    nc = await connect(b.nats_url)
    try:

        async def relayed() -> list[tuple[int, dict[str, Any]]] | None:
            mine = await stored(nc, b.api.tenant.account_id, timeout=0.5)
            ok = any(e["object_id"] == second and e["data"].get("to_state") == "Successful" for _, e in mine)
            return mine if ok else None

        await eventually(relayed, 20, "job 2's end in the stream")
        assert not [r for r in page.seen("event") if r["phase"] == 2]  # nothing while closed

        # Back: a new ticket and the last id seen. Every missed event comes, then the live ones.
        page.send("reconnect")
        await until(b, "job 2 Successful on the page", lambda: states_seen(page.seen(), second) == states2)
        assert page.seen("reset") == []
        reopened = page.seen("open")
        assert len(reopened) == 2 and reopened[1]["last"] == str(last_before)
        assert {first, second} <= set(page.seen("jobs")[-1]["ids"])  # the list, reloaded cross-origin

        # Exactly the account's events from the page's first one on, in the stream's order: no gap
        # across the reconnect and nothing twice (robot.status events may still be on their way).
        async def complete() -> tuple[list[int], list[int]] | None:
            seen_ids = [r["id"] for r in page.seen("event")]
            start = seen_ids[0]
            in_stream = [
                seq for seq, _ in await stored(nc, b.api.tenant.account_id, timeout=0.5) if seq >= start
            ]
            return (seen_ids, in_stream) if seen_ids == in_stream else None

        try:
            seen_ids, _ = await eventually(complete, 20, "the page has every event of the stream")
        except AssertionError:
            seen_ids = [r["id"] for r in page.seen("event")]
            raise AssertionError(
                f"page {seen_ids} vs stream {await stored(nc, b.api.tenant.account_id)}"
            ) from None
    finally:
        await nc.close()
    before = [r["id"] for r in page.seen("event") if r["phase"] == 1]
    after = [r["id"] for r in page.seen("event") if r["phase"] == 2]
    assert before[-1] == last_before and after[0] > last_before
    assert len(set(seen_ids)) == len(seen_ids)
    # What happened while the page was away came on the reconnect: job 2's whole life.
    missed = [r for r in page.seen("event") if r["phase"] == 2 and r["data"]["object_id"] == second]
    assert [r["type"] for r in missed] == ["job.created"] + ["job.state"] * (len(states2) - 1)
    assert states_seen(page.seen(), first) == states1  # and job 1 not again
    # The API's answers carried CORS for the page's origin (preflights included, or the page failed).
    preflight = httpx.options(
        f"{page.config['api']}/api/v1/jobs",
        headers={
            "Origin": page.origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
        timeout=10,
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == page.origin
