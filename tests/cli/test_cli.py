"""The ``rpa`` command driven as a user or a CI pipeline drives it: a subprocess with its own HOME and
config folder, against a running orchestrator (API, scheduler and gateway processes) with a real robot.

Also the examples in examples/ci/: their ``rpa`` lines run as they are, with the variables a pipeline
would set.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, ROOT, Tenant
from tests.e2e.conftest import Api, Stack, clean_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

RPA = str(Path(sys.executable).parent / "rpa")
EXAMPLES = Path(ROOT) / "examples"


@dataclass
class Live:
    api: Api
    server: str
    robot_id: str
    robot_name: str
    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        return clean_env(
            HOME=str(self.home),
            XDG_CONFIG_HOME=str(self.home / ".config"),
            XDG_DATA_HOME=str(self.home / ".local" / "share"),
            COLUMNS="200",
            **extra,
        )

    async def rpa(
        self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run,
            [RPA, *args],
            env=env or self.env(),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )


@pytest.fixture
async def live(stack: Stack, api: Api, tmp_path: Path) -> Live:
    # Nothing here is about time: leases and heartbeats long enough for a busy machine.
    calm = {"RPA_JOB_LEASE_S": "30", "RPA_HEARTBEAT_INTERVAL_S": "2", "RPA_SWEEP_INTERVAL_S": "1"}
    api_svc = stack.service("api", settings=calm, RPA_API_WORKERS="1")
    scheduler, gateway = stack.service("scheduler", settings=calm), stack.service("gateway", settings=calm)

    for svc in (api_svc, scheduler, gateway):
        svc.start()
    # The machine may be busy: more time than Stack.start's default to come up.
    await asyncio.gather(*(asyncio.to_thread(svc.wait_ready, 120) for svc in (api_svc, scheduler, gateway)))
    name = f"cli-bot-{uuid.uuid4().hex[:6]}"
    robot_id, key = await api.robot(name=name)
    stack.robot(gateway.ws_url, key)
    await api.wait_robot(robot_id, "Ready", stack=stack)
    home = tmp_path / "home"
    home.mkdir()
    return Live(api, api_svc.http_url, robot_id, name, home)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("rpa: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


async def test_login_publish_run_with_wait_logs_and_failures(
    live: Live, tenant: Tenant, stack: Stack
) -> None:
    # Not logged in: one clear line.
    assert "not logged in" in one_error_line(await live.rpa("robots", "list"))

    # A wrong password: the API's problem, in one line; then the right one, from the environment.
    bad = await live.rpa(
        "login",
        "--server",
        live.server,
        "-u",
        tenant.admin_username,
        env=live.env(RPA_PASSWORD="wrong password!"),
    )
    assert "401" in one_error_line(bad)
    ok = await live.rpa(
        "login", "--server", live.server, "-u", tenant.admin_username, env=live.env(RPA_PASSWORD=PASSWORD)
    )
    assert ok.returncode == 0, ok.stderr
    assert f"as {tenant.admin_username}" in ok.stdout
    # This machine has no OS keyring: the session is kept in a file of the user's only, and it says so.
    assert "No OS keyring available" in ok.stderr
    config_dir = live.home / ".config" / "rpa"
    secrets = config_dir / "secrets.json"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    assert PASSWORD not in secrets.read_text() and PASSWORD not in (config_dir / "config.json").read_text()
    profile = json.loads((config_dir / "config.json").read_text())
    assert (
        profile["profiles"]["default"]["server"] == live.server
        and profile["profiles"]["default"]["store"] == "file"
    )

    # Publish a folder: a new process, then (same folder, same version label) the API's 409 in one line.
    published = await live.rpa("publish", str(EXAMPLES / "hello"), "--notes", "from the cli")
    assert published.returncode == 0, published.stderr
    assert "Created process hello version 1.0.0" in published.stdout
    again = await live.rpa("publish", str(EXAMPLES / "hello"))
    assert "409" in one_error_line(again)

    # A job with --wait prints its logs and exits 0 when Successful.
    run = await live.rpa(
        "jobs",
        "start",
        "hello",
        "--robot",
        live.robot_name,
        "--arg",
        "name=Ada",
        "--arg",
        "count=3",
        "--wait",
    )
    assert run.returncode == 0, run.stdout + run.stderr + stack.report()
    assert [line.split(None, 3)[-1] for line in run.stdout.splitlines()] == [
        f"hello Ada #{n}" for n in range(3)
    ]
    assert "Successful" in run.stderr and '"greeting": "Hello, Ada!"' in run.stderr
    job_id = re.search(r"Job (\S+) Pending", run.stderr).group(1)  # type: ignore[union-attr]

    # Its logs afterwards, whole and through the live tail (which ends: the job is over).
    tail = await live.rpa("logs", "tail", job_id)
    assert tail.returncode == 0 and "hello Ada #2" in tail.stdout
    follow = await live.rpa("logs", "tail", job_id, "-f")
    assert follow.returncode == 0, follow.stderr
    assert [line.split(None, 3)[-1] for line in follow.stdout.splitlines()] == [
        f"hello Ada #{n}" for n in range(3)
    ]

    # A failing script: non-zero exit code, the state and error on stderr.
    assert (await live.rpa("publish", str(EXAMPLES / "fail"))).returncode == 0
    failed = await live.rpa("jobs", "start", "fail", "--robot", live.robot_id, "--wait")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "Failed" in failed.stderr and "Traceback" not in failed.stderr.split("Failed", 1)[0]

    # Stop a running job: `jobs wait` exits non-zero (Stopped).
    assert (await live.rpa("publish", str(EXAMPLES / "long"))).returncode == 0
    started = await live.rpa("jobs", "start", "long", "--robot", live.robot_id, "--arg", "seconds=60")
    assert started.returncode == 0, started.stderr
    long_id = started.stdout.strip()
    await live.api.wait_job(long_id, "Running", stack=stack)
    explained = await live.rpa("jobs", "explain", long_id)
    assert explained.returncode == 0, explained.stderr
    assert f"Job {long_id} Running (not waiting)" in explained.stdout
    assert f"running: running on robot {live.robot_name!r} since" in explained.stdout
    stopped = await live.rpa("jobs", "stop", long_id)
    assert stopped.returncode == 0, stopped.stderr
    waited = await live.rpa("jobs", "wait", long_id, "--timeout", "60")
    assert waited.returncode == 1 and "Stopped" in waited.stderr, waited.stdout + waited.stderr
    assert "started" in waited.stdout

    # Lists as JSON.
    robots = await live.rpa("robots", "list", "--json")
    assert robots.returncode == 0, robots.stderr
    assert [r["name"] for r in json.loads(robots.stdout)] == [live.robot_name]
    jobs = json.loads((await live.rpa("jobs", "list", "--json")).stdout)
    assert {j["state"] for j in jobs} == {"Successful", "Failed", "Stopped"}

    # Unknown names and bad input: one line, non-zero.
    assert "no process named 'nope'" in one_error_line(
        await live.rpa("jobs", "start", "nope", "--robot", live.robot_name)
    )
    assert "KEY=VALUE" in one_error_line(
        await live.rpa("jobs", "start", "hello", "--robot", live.robot_name, "--arg", "oops")
    )


async def _bumped(home: Path, version: str) -> Path:
    """A checkout whose examples/hello has another version label."""
    root = home / "checkout"
    target = root / "examples" / "hello"
    target.mkdir(parents=True)
    for path in (EXAMPLES / "hello").iterdir():
        if path.is_file() and path.suffix in (".py", ".json"):
            (target / path.name).write_bytes(path.read_bytes())
    manifest = json.loads((target / "rpa.json").read_text())
    (target / "rpa.json").write_text(json.dumps({**manifest, "version": version}))
    return root


def ci_commands(path: Path) -> list[str]:
    """The ``rpa`` lines of a CI file (``run: rpa ...`` of a GitHub step, ``- rpa ...`` of a GitLab script)."""
    lines = []
    for line in path.read_text().splitlines():
        match = re.match(r"^\s*(?:run:|-)\s*(rpa\s.*)$", line)
        if match:
            lines.append(match.group(1))
    return lines


async def test_the_ci_examples_publish_and_run_a_job(live: Live, stack: Stack) -> None:
    key = (await live.api.call("POST", "/api-keys", 201, json={"name": "ci"}))["key"]
    group = f"ci-{uuid.uuid4().hex[:6]}"
    await live.api.group([live.robot_id], name=group)
    env = live.env(
        RPA_SERVER=live.server,
        RPA_API_KEY=key,
        RPA_ROBOT_GROUP=group,
        GITHUB_SHA="0123abc",
        CI_COMMIT_SHA="0123abc",
    )
    # As after the pipeline's `pip install`: `rpa` on the PATH.
    env["PATH"] = f"{Path(RPA).parent}{os.pathsep}{env.get('PATH', '')}"
    for example in ("github-actions.yml", "gitlab-ci.yml"):
        commands = ci_commands(Path(ROOT) / "examples" / "ci" / example)
        assert [c.split()[:2] for c in commands] == [["rpa", "publish"], ["rpa", "jobs"]], example
        # The second pipeline publishes the same version label: make it a new one, as a new commit would.
        script = "set -eu\n" + "\n".join(commands) + "\n"
        result = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-c", script],
            env=env,
            capture_output=True,
            text=True,
            timeout=150,
            cwd=ROOT if example.startswith("github") else str(await _bumped(live.home, "2.0.0")),
        )
        assert result.returncode == 0, example + result.stdout + result.stderr + stack.report()
        assert "hello CI #1" in result.stdout and "Successful" in result.stderr, example
        assert key not in result.stdout + result.stderr
    assert not (live.home / ".config" / "rpa").exists()  # no login needed, nothing stored

    # The same key drives the other commands a pipeline may use.
    queue = (await live.api.call("POST", "/queues", 201, json={"name": f"q-{group}"}))["name"]
    added = await live.rpa(
        "queues",
        "add-task",
        queue,
        "--name",
        "invoice 1",
        "--param",
        "amount=12.5",
        "--param",
        "who=Ada",
        env=env,
    )
    assert added.returncode == 0, added.stderr
    queue_id = (await live.api.call("GET", f"/queues?name={queue}", 200))["items"][0]["id"]
    tasks = (await live.api.call("GET", f"/queues/{queue_id}/tasks", 200))["items"]
    assert [(t["name"], t["parameters"]) for t in tasks] == [("invoice 1", {"amount": 12.5, "who": "Ada"})]
    set_ = await live.rpa("resources", "set", "erp_url", "https://erp.example.com", env=env)
    assert set_.returncode == 0, set_.stderr
    listed = json.loads((await live.rpa("resources", "list", "--json", env=env)).stdout)
    assert [(r["name"], r["kind"]) for r in listed] == [("erp_url", "text")]
    values = await live.api.call("GET", f"/resources/{listed[0]['id']}/values", 200)
    items = values["items"] if isinstance(values, dict) else values
    assert [v["text"] for v in items] == ["https://erp.example.com"]
