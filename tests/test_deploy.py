"""The deployment files are valid for the tools that read them."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.mark.parametrize("cfg", sorted(glob.glob(os.path.join(ROOT, "deploy", "haproxy", "*.cfg"))))
def test_haproxy_configs_are_valid(cfg: str) -> None:
    if shutil.which("haproxy") is None:
        if IN_CI:
            pytest.fail("haproxy is not installed (.ci/run installs it)")
        pytest.skip("!!! haproxy not installed: HAProxy configs NOT checked (apt-get install haproxy) !!!")
    out = subprocess.run(["haproxy", "-c", "-f", cfg], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
