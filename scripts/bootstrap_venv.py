"""Create or refresh ``.venv`` from ``uv.lock``, needing nothing but Python 3.11+.

uv itself (pinned) lives in ``.venv-tools/``, a separate venv made with ``python -m venv`` and pip:
``uv sync`` removes every package the lock does not name, so uv cannot live in ``.venv``.
A stamp in ``.venv`` records a hash of everything the sync depends on; when it matches, this
script exits at once, so every Makefile target can depend on it.

Usage: python3 scripts/bootstrap_venv.py [--force]
Only the standard library is used here: this runs before any dependency exists.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
TOOLS = ROOT / ".venv-tools"
UV_VERSION = "0.13.8"
STAMP = VENV / ".rpa-bootstrap-stamp"
BIN = "Scripts" if os.name == "nt" else "bin"


def _say(msg: str) -> None:
    print(f"[venv] {msg}", file=sys.stderr, flush=True)


def _sync_inputs() -> list[Path]:
    """Files whose change can change what ``uv sync`` installs."""
    files = [ROOT / "uv.lock", ROOT / "pyproject.toml"]
    # Workspace members: their dependency lists feed the lock check of `uv sync --locked`.
    import tomllib  # here, so that an old Python gets the version message below, not an ImportError

    with open(ROOT / "pyproject.toml", "rb") as f:
        members = tomllib.load(f).get("tool", {}).get("uv", {}).get("workspace", {}).get("members", [])
    for pattern in members:
        files += sorted(p / "pyproject.toml" for p in ROOT.glob(pattern))
    return files


def _fingerprint() -> str:
    h = hashlib.sha256()
    h.update(f"uv={UV_VERSION}\n".encode())
    for path in _sync_inputs():
        h.update(str(path.relative_to(ROOT)).encode() + b"\0")
        h.update(path.read_bytes() if path.exists() else b"<missing>")
        h.update(b"\0")
    return h.hexdigest()


def _uv() -> Path:
    """The pinned uv, installed into ``.venv-tools`` on first use."""
    uv = TOOLS / BIN / ("uv.exe" if os.name == "nt" else "uv")
    if uv.exists():
        out = subprocess.run([str(uv), "--version"], capture_output=True, text=True, check=False).stdout
        if out.split()[1:2] == [UV_VERSION]:
            return uv
        _say(f"{uv} is {out.strip() or 'broken'}; reinstalling uv=={UV_VERSION}")
        shutil.rmtree(TOOLS)
    _say(f"installing uv=={UV_VERSION} into {TOOLS.relative_to(ROOT)}/")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(TOOLS)], check=True)
    except subprocess.CalledProcessError:
        sys.exit(
            "[venv] `python -m venv` failed; on Debian/Ubuntu install the venv module "
            "(apt-get install python3-venv) and retry"
        )
    # Keep the tools venv out of git without touching the repository's .gitignore.
    (TOOLS / ".gitignore").write_text("*\n")
    pip = [str(TOOLS / BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", f"uv=={UV_VERSION}"], check=True)
    return uv


def bootstrap(force: bool = False) -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this script is what runs on an unknown Python
        sys.exit(f"[venv] Python 3.11+ is required, {sys.executable} is {sys.version.split()[0]}")
    fingerprint = _fingerprint()
    if (
        not force
        and (VENV / BIN / "python").exists()
        and STAMP.exists()
        and STAMP.read_text().strip() == fingerprint
    ):
        return
    started = time.monotonic()
    uv = _uv()
    env = {k: v for k, v in os.environ.items() if k not in ("UV_PROJECT_ENVIRONMENT", "VIRTUAL_ENV")}
    # Never fetch a Python: the one running this script is the one we want.
    env.setdefault("UV_PYTHON_DOWNLOADS", "never")
    # Compiled once here, so that the first start of each service does not compile 2000 modules.
    cmd = [str(uv), "sync", "--locked", "--compile-bytecode"]
    if not (VENV / BIN / "python").exists():
        _say(f"creating .venv with {sys.executable}")
        cmd += ["--python", sys.executable]
    _say(" ".join(["uv", *cmd[1:]]))
    result = subprocess.run(cmd, cwd=ROOT, env=env, check=False)
    if result.returncode != 0:
        STAMP.unlink(missing_ok=True)
        sys.exit(
            f"[venv] uv sync failed ({result.returncode}); if uv.lock is stale, run "
            f"`{uv.relative_to(ROOT)} lock` and commit it"
        )
    STAMP.write_text(fingerprint + "\n")
    _say(f"ready in {time.monotonic() - started:.1f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="sync even when the stamp is current")
    bootstrap(parser.parse_args().force)


if __name__ == "__main__":
    main()
