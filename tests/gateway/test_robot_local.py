"""Attended use without the orchestrator: ``rpa-robot run-local`` runs a package folder or zip."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from tests.conftest import ROOT
from tests.gateway.conftest import EXAMPLES, _env


def run_local(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rpa_robot", "run-local", *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_run_local_folder_with_input_succeeds() -> None:
    proc = run_local(str(EXAMPLES / "hello"), "--input", '{"name": "Grace", "count": 2}')
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "status": "successful",
        "output": {"greeting": "Hello, Grace!", "lines": 2},
        "error": None,
    }
    assert "hello Grace #1" in proc.stderr


def test_run_local_zip_that_raises_fails(tmp_path: Path) -> None:
    package = tmp_path / "fail.zip"
    with zipfile.ZipFile(package, "w") as zf:
        for path in (EXAMPLES / "fail").iterdir():
            zf.write(path, path.name)
    proc = run_local(str(package))
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["status"] == "failed" and result["error"] == "RuntimeError: something went wrong on purpose"


def test_run_local_soft_stop_on_ctrl_c() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "rpa_robot", "run-local", str(EXAMPLES / "long")],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    seen = ""
    while "started" not in seen and time.monotonic() < deadline:
        seen += proc.stderr.readline()  # the script's first log line: it is running
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert json.loads(out)["status"] == "stopped", err
    assert proc.returncode == 1


def test_run_local_refuses_a_folder_without_manifest(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("print('x')\n")
    proc = run_local(str(tmp_path))
    assert proc.returncode == 2 and "rpa.json" in proc.stderr


def test_run_local_requests_raise_offline_at_once(tmp_path: Path) -> None:
    """Without an orchestrator a task or credential request raises ``sdk.Offline``, never hangs."""
    results = tmp_path / "results.jsonl"
    steps = [{"op": "take", "queue": "q", "timeout": 30}, {"op": "credential", "name": "erp"}]
    started = time.monotonic()
    proc = run_local(
        str(Path(__file__).parent / "packages" / "sdk_probe"),
        "--input",
        json.dumps({"steps": steps, "results": str(results)}),
    )
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 20
    got = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(g["op"], g["error"], g["class"]) for g in got] == [
        ("take", "offline", "Offline"),
        ("credential", "offline", "Offline"),
    ]
