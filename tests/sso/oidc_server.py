"""A throwaway OpenID provider (``tests/sso/oidc_provider``: Node's ``oidc-provider``) on loopback.

``npm ci`` fills ``node_modules`` from the committed lockfile the first time. The server gets its
client and users through the environment, runs as a child of the test, and is killed by pid.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
from pathlib import Path

HERE = Path(__file__).parent / "oidc_provider"


def node_binary() -> str | None:
    return shutil.which("node")


def ensure_installed() -> None:
    if (HERE / "node_modules" / "oidc-provider").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed: cannot install the test OpenID provider")
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=HERE, check=True, timeout=300
    )


class OidcProvider:
    def __init__(
        self,
        port: int,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        users: dict[str, dict[str, object]],
    ) -> None:
        node = node_binary()
        assert node is not None
        ensure_installed()
        self.issuer = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "PORT": str(port),
            "CLIENT_ID": client_id,
            "CLIENT_SECRET": client_secret,
            "REDIRECT_URI": redirect_uri,
            "USERS": json.dumps(users),
        }
        self.proc = subprocess.Popen(
            [node, "server.js"],
            cwd=HERE,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        # The server prints one line once it listens; never wait for it for ever.
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else "(nothing in 30 s)"
        if not line.startswith("listening"):
            self.stop()
            raise RuntimeError(f"the OpenID provider did not start: {line!r}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
