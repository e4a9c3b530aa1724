"""A client generated from the live OpenAPI document works: what a CI pipeline author would do.

openapi-python-client generates a package from ``/openapi.json`` with no warning (every operation
and every schema understood), and that package, imported fresh, logs in, publishes a tiny process
package, creates a robot, starts a job and downloads the package back, against the running API.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import uuid
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx

from tests.api.conftest import LiveAPI
from tests.api.helpers import make_package

GENERATOR = str(Path(sys.executable).with_name("openapi-python-client"))


def _generate(spec: Path, out: Path) -> str:
    # The generator formats its output with ruff from PATH: the one of this environment.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [GENERATOR, "generate", "--path", str(spec), "--output-path", str(out), "--meta", "none"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


async def test_generated_client_runs_a_job(live_api: LiveAPI, tmp_path: Path) -> None:
    spec = tmp_path / "openapi.json"
    spec.write_bytes(httpx.get(f"{live_api.url}/openapi.json", timeout=60).content)
    package = f"rpa_client_{uuid.uuid4().hex[:8]}"
    output = _generate(spec, tmp_path / package)
    assert "warning" not in output.lower(), output
    assert "error" not in output.lower(), output

    sys.path.insert(0, str(tmp_path))
    try:
        client_mod: Any = importlib.import_module(package)
        api = f"{package}.api"
        auth_token: Any = importlib.import_module(f"{api}.auth.auth_token")
        robots_create: Any = importlib.import_module(f"{api}.robots.robots_create")
        processes_publish: Any = importlib.import_module(f"{api}.processes.processes_publish")
        download: Any = importlib.import_module(f"{api}.processes.processes_download_package")
        jobs_create: Any = importlib.import_module(f"{api}.jobs.jobs_create")
        jobs_get: Any = importlib.import_module(f"{api}.jobs.jobs_get")
        models: Any = importlib.import_module(f"{package}.models")
        types: Any = importlib.import_module(f"{package}.types")
    finally:
        sys.path.remove(str(tmp_path))

    admin = await live_api.new_admin()
    anonymous = client_mod.Client(base_url=live_api.url)
    token = await auth_token.asyncio(
        client=anonymous, body=models.BodyAuthToken(username=admin.username, password=admin.password)
    )
    assert isinstance(token, models.TokenOut), token
    client = client_mod.AuthenticatedClient(base_url=live_api.url, token=token.access_token)

    robot = await robots_create.asyncio(client=client, body=models.RobotCreate(name="generated-client"))
    assert isinstance(robot, models.RobotWithKey), robot
    assert robot.key.startswith("rbk_")

    zip_bytes = make_package("generated-client-hello", "1.0.0")
    published = await processes_publish.asyncio(
        client=client,
        body=models.BodyProcessesPublish(
            package=types.File(payload=BytesIO(zip_bytes), file_name="hello.zip", mime_type="application/zip")
        ),
    )
    assert isinstance(published, models.PublishResult), published

    job = await jobs_create.asyncio(
        client=client, body=models.JobCreate(process_id=published.process.id, robot_id=robot.id)
    )
    assert isinstance(job, models.JobOut), job
    assert job.state == models.JobState.PENDING
    detail = await jobs_get.asyncio(job.id, client=client)
    assert isinstance(detail, models.JobDetail) and detail.history[0].to_state == models.JobState.PENDING

    # The package download is binary, and errors are parsed as ProblemDetails.
    package_file = await download.asyncio(published.process.id, published.version.id, client=client)
    assert isinstance(package_file, types.File) and package_file.payload.read() == zip_bytes
    missing = await jobs_get.asyncio(uuid.uuid4(), client=client)
    assert isinstance(missing, models.ProblemDetails) and missing.status == 404
