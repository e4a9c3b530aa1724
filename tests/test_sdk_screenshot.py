"""``sdk.screenshot()`` without the orchestrator: a real capture of a real X display (Xvfb) by a
script run with ``rpa-robot run-local``; and the clear error a script gets when there is no display."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.images import decode_png
from tests.xvfb import Display, xvfb_display

EXAMPLE = Path(ROOT) / "examples" / "screenshot"


@pytest.fixture
def xvfb() -> Iterator[Display]:
    yield from xvfb_display()


def _run_local(cwd: Path, display: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPA_") and k != "DISPLAY"}
    if display is not None:
        env["DISPLAY"] = display
    return subprocess.run(
        [sys.executable, "-m", "rpa_robot", "run-local", str(EXAMPLE)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_run_local_screenshot_captures_the_whole_display(tmp_path: Path, xvfb: Display) -> None:
    proc = _run_local(tmp_path, xvfb.name)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "successful", result
    shot_id = result["output"]["screenshot_id"]
    image = tmp_path / "rpa-screenshots" / f"{shot_id}.png"
    assert decode_png(image.read_bytes()) == (xvfb.width, xvfb.height)
    meta = json.loads(image.with_suffix(".json").read_text())
    assert meta["id"] == shot_id and meta["message_id"] == result["output"]["message_id"]


def test_screenshot_without_a_display_is_a_clear_error(tmp_path: Path) -> None:
    proc = _run_local(tmp_path, None)
    result = json.loads(proc.stdout)
    assert result["status"] == "failed"
    assert "no_display" in result["error"], result
    assert not (tmp_path / "rpa-screenshots").exists() or not list((tmp_path / "rpa-screenshots").iterdir())
