"""`make lint`'s supply-chain checks: bandit on our code, pip-audit on the locked dependencies.

bandit fails on any finding of high severity (medium and low ones are printed, not fatal).
pip-audit checks every package pinned in uv.lock (all groups, the workspace's own packages left
out) against PyPI's vulnerability data and fails on any known vulnerability. When that service
cannot be reached (a machine whose package index is a mirror without PyPI's JSON API), every
package comes back "not found": that is said loudly and does not fail the run, unless
``RPA_AUDIT_STRICT=1`` (then an unaudited dependency fails too).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
UV = ROOT / ".venv-tools" / "bin" / "uv"


def bandit() -> int:
    print("== bandit (high severity fails)", flush=True)
    return subprocess.call(
        [BIN / "bandit", "-q", "-r", "libs", "services", "robot", "--severity-level", "high"], cwd=ROOT
    )


def pip_audit() -> int:
    print("== pip-audit (locked dependencies)", flush=True)
    exported = subprocess.run(
        [UV, "export", "--frozen", "--no-hashes", "--no-emit-workspace", "--all-groups"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as req:
        req.write(exported)
    args = [BIN / "pip-audit", "-r", req.name, "--no-deps", "--disable-pip", "--progress-spinner", "off"]
    try:
        run = subprocess.run(
            [*args, "-f", "json"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        os.unlink(req.name)
    try:
        report = json.loads(run.stdout)
    except ValueError:
        print(run.stdout + run.stderr, file=sys.stderr)
        return run.returncode or 1
    deps = report["dependencies"]
    vulnerable = [d for d in deps if d.get("vulns")]
    unaudited = [d for d in deps if d.get("skip_reason")]
    for dep in vulnerable:
        for vuln in dep["vulns"]:
            fixes = ", ".join(vuln.get("fix_versions") or []) or "no fixed release"
            print(f"  {dep['name']} {dep['version']}: {vuln['id']} (fixed in {fixes})")
    audited = len(deps) - len(unaudited)
    print(
        f"  {len(deps)} locked packages: {audited} audited, {len(vulnerable)} vulnerable, {len(unaudited)} unaudited"
    )
    if unaudited and audited == 0:
        print(
            "  WARNING: pip-audit could not reach PyPI's vulnerability data from this machine (every package"
            " answered 'not found'): nothing was audited. Run `make lint` where pypi.org is reachable.",
            file=sys.stderr,
        )
    elif unaudited:
        for dep in unaudited:
            print(f"  not audited: {dep['name']}: {dep['skip_reason']}", file=sys.stderr)
    if vulnerable:
        return 1
    if unaudited and os.environ.get("RPA_AUDIT_STRICT") == "1":
        return 1
    return 0


def main() -> int:
    rc = bandit()
    return pip_audit() or rc


if __name__ == "__main__":
    sys.exit(main())
