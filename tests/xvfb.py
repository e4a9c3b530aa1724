"""A real X display for screenshot tests: ``Xvfb`` (Debian package ``xvfb``) on a display it picks.

Without Xvfb the tests that need it skip, loudly (the reason names the package); under ``CI=true``
they fail instead: ``.ci/run`` installs it, so its absence there is a broken CI, not a reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import IN_CI

WIDTH, HEIGHT = 1024, 768


@dataclass(frozen=True)
class Display:
    name: str  # ":N", for DISPLAY
    width: int
    height: int


def xvfb_display() -> Iterator[Display]:
    """Start Xvfb, yield its display, stop it (use it in a fixture: ``yield from xvfb_display()``)."""
    exe = shutil.which("Xvfb")
    if exe is None:
        msg = "Xvfb is not installed (Debian package `xvfb`): screenshots cannot be tested here"
        if IN_CI:
            pytest.fail(f"{msg}; .ci/run installs it (apt-get install -y xvfb)")
        print(f"\nSKIPPING: {msg}", file=sys.stderr, flush=True)
        pytest.skip(msg)
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [exe, "-displayfd", str(write_fd), "-screen", "0", f"{WIDTH}x{HEIGHT}x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    try:
        with os.fdopen(read_fd, "rb") as f:
            number = f.readline().strip().decode()  # written once the server accepts clients
        if not number.isdigit():
            pytest.fail(f"Xvfb did not start (exit code {proc.poll()})")
        yield Display(f":{number}", WIDTH, HEIGHT)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
