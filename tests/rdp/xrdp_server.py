"""A real RDP server on loopback for tests and benchmarks: xrdp + xrdp-sesman + Xorg sessions, and an
Xvfb display for the FreeRDP client.

Needs root (OS accounts, xrdp's sessions run as those accounts) and Debian's ``xrdp xorgxrdp
freerdp2-x11 xvfb``, which ``ensure_packages`` installs with apt-get when they are missing. The
daemons run with private copies of their configuration: xrdp listens on 127.0.0.1 only, on a free
port, with ``security_layer=tls`` and a certificate made for the run (so the client can pin its
fingerprint). xrdp finds sesman through ``/etc/xrdp/sesman.ini``'s port (3350), so one server runs
at a time on a machine.

The robot inside a session runs the worktree's reference robot with the system's Python 3.11 (the
project's interpreter may live where the accounts cannot read it): a launcher in a world-readable
directory adds the project's site-packages (editable installs included) and calls the robot's
``main``. Its command line holds no secret.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("xrdp", "xorgxrdp", "freerdp2-x11", "xvfb")
PROGRAMS = ("/usr/sbin/xrdp", "/usr/sbin/xrdp-sesman", "/usr/bin/xfreerdp", "/usr/bin/Xvfb")
SESMAN_PORT = 3350
SYSTEM_PYTHON = "/usr/bin/python3"


class Unavailable(Exception):
    """The machine cannot run the RDP server (not root, no packages, port taken): the reason."""


def missing_programs() -> list[str]:
    return [p for p in PROGRAMS if not os.access(p, os.X_OK)] + (
        [] if os.path.exists("/usr/lib/xorg/modules/drivers/xrdpdev_drv.so") else ["xorgxrdp"]
    )


def ensure_packages() -> None:
    """apt-get install the Debian packages when a program is missing (as .ci/run does for haproxy)."""
    if not missing_programs():
        return
    if os.geteuid() != 0:
        raise Unavailable(f"not root and missing {missing_programs()}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        done = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise Unavailable(f"apt-get install {' '.join(PACKAGES)} failed: {done.stderr[-500:]}")
    if missing_programs():
        raise Unavailable(f"still missing after apt-get: {missing_programs()}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def ensure_account(login: str, password: str) -> None:
    """An OS account with a home and this password (set through chpasswd's stdin, never argv)."""
    if subprocess.run(["id", "-u", login], capture_output=True, check=False).returncode != 0:
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", login], check=True, capture_output=True)
    subprocess.run(["chpasswd"], input=f"{login}:{password}\n", text=True, check=True, capture_output=True)


def remove_account(login: str) -> None:
    # Processes of the account (a session that lingers) go first, by the account's uid only.
    subprocess.run(["pkill", "-KILL", "-u", login], capture_output=True, check=False)
    subprocess.run(["userdel", "-r", login], capture_output=True, check=False)


@dataclass
class XrdpServer:
    """The running server. ``fingerprint``: FreeRDP's ``sha256:..`` value for ``/cert:fingerprint:``."""

    root: Path
    port: int
    display: str
    fingerprint: str
    door_dir: Path
    launcher: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    accounts: list[str] = field(default_factory=list)

    def robot_shell(self) -> str:
        """The robot's command in a session (the coordinator appends ``--door``)."""
        return f"{SYSTEM_PYTHON} {self.launcher} run --unattended --exit-after-job --max-backoff-s 1"

    def account(self, login: str) -> str:
        """Make (or reset) an OS account with a fresh random password; returns the password."""
        password = f"Rdp-{secrets.token_urlsafe(12)}!"
        ensure_account(login, password)
        if login not in self.accounts:
            self.accounts.append(login)
        return password

    def logs(self) -> str:
        parts = []
        for name in ("xrdp.log", "sesman.log", "xrdp.out", "sesman.out"):
            path = self.root / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')[-3000:]}")
        for login in self.accounts:
            path = Path(f"/home/{login}/robot-session.log")
            if path.exists():
                parts.append(f"--- {path}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)


LAUNCHER = """\
# The reference robot, run by the system Python inside an RDP session (no secret here).
import os, site, sys
log = open(os.path.expanduser("~/robot-session.log"), "a", buffering=1)
os.dup2(log.fileno(), 1)
os.dup2(log.fileno(), 2)
for path in {paths!r}:
    site.addsitedir(path)
# The robot runs each job's script in a child Python: it must find the same packages.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
from rpa_robot.__main__ import main
sys.argv[0] = "rpa-robot"
main()
"""


def _free_display() -> str:
    for n in range(90, 200):
        if not os.path.exists(f"/tmp/.X11-unix/X{n}") and not os.path.exists(f"/tmp/.X{n}-lock"):
            return f":{n}"
    raise Unavailable("no free X display number")


def _configure(root: Path, port: int) -> None:
    xrdp = (Path("/etc/xrdp/xrdp.ini")).read_text().splitlines()
    out = []
    for line in xrdp:
        key = line.split("=", 1)[0].strip() if "=" in line else ""
        if key == "port" and line.strip() == "port=3389":
            line = f"port=tcp://127.0.0.1:{port}"
        elif key == "security_layer":
            line = "security_layer=tls"
        elif key == "certificate":
            line = f"certificate={root / 'cert.pem'}"
        elif key == "key_file":
            line = f"key_file={root / 'key.pem'}"
        elif key == "LogFile":
            line = f"LogFile={root / 'xrdp.log'}"
        out.append(line)
    (root / "xrdp.ini").write_text("\n".join(out) + "\n")
    sesman = []
    for line in Path("/etc/xrdp/sesman.ini").read_text().splitlines():
        key = line.split("=", 1)[0].strip() if "=" in line else ""
        if key == "ListenAddress":
            line = "ListenAddress=127.0.0.1"
        elif key == "ListenPort":
            line = f"ListenPort={SESMAN_PORT}"
        elif key == "LogFile":
            line = f"LogFile={root / 'sesman.log'}"
        sesman.append(line)
    (root / "sesman.ini").write_text("\n".join(sesman) + "\n")


def _fingerprint(cert: Path) -> str:
    out = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return "sha256:" + out.strip().split("=", 1)[1].lower()


@contextlib.contextmanager
def xrdp_server() -> Iterator[XrdpServer]:
    """Start xrdp-sesman, xrdp and Xvfb; stop them (and remove the accounts made) at the end."""
    if os.geteuid() != 0:
        raise Unavailable("needs root (OS accounts, xrdp sessions)")
    ensure_packages()
    if _answers(SESMAN_PORT) or _answers(SESMAN_PORT, "::1"):
        raise Unavailable(f"port {SESMAN_PORT} is taken: another xrdp-sesman runs on this machine")
    root = Path(tempfile.mkdtemp(prefix="rpa-xrdp-"))
    # World-readable: the accounts' robots read the launcher and knock at the door in here.
    os.chmod(root, 0o755)  # noqa: S103
    door_dir = root / "door"
    door_dir.mkdir(mode=0o755)
    paths = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    launcher = root / "robot.py"
    launcher.write_text(LAUNCHER.format(paths=paths))
    launcher.chmod(0o644)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(root / "key.pem"),
            "-out",
            str(root / "cert.pem"),
        ],
        capture_output=True,
        check=True,
    )
    port = free_port()
    _configure(root, port)
    # No init system: the socket directory and the X11 socket directory are made by hand.
    subprocess.run(["sh", "/usr/share/xrdp/socksetup"], capture_output=True, check=False)
    os.makedirs("/run/xrdp/sockdir", exist_ok=True)
    os.makedirs("/tmp/.X11-unix", exist_ok=True)
    os.chmod("/tmp/.X11-unix", 0o1777)  # noqa: S103 - what X expects
    display = _free_display()
    server = XrdpServer(root, port, display, _fingerprint(root / "cert.pem"), door_dir, launcher)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPA_")}
    try:
        for name, argv in (
            ("sesman", ["xrdp-sesman", "--nodaemon", "--config", str(root / "sesman.ini")]),
            ("xrdp", ["xrdp", "--nodaemon", "--config", str(root / "xrdp.ini")]),
            ("xvfb", ["Xvfb", display, "-screen", "0", "1024x768x24", "-nolisten", "tcp"]),
        ):
            out = open(root / f"{name}.out", "wb")  # noqa: SIM115 - owned by the child
            server.procs.append(
                subprocess.Popen(argv, stdout=out, stderr=out, env=env, cwd=root, start_new_session=True)
            )
            out.close()
            if name == "sesman":
                _wait(lambda: _answers(SESMAN_PORT) or _answers(SESMAN_PORT, "::1"), "xrdp-sesman", server)
        _wait(lambda: _answers(port), "xrdp", server)
        _wait(lambda: os.path.exists(f"/tmp/.X11-unix/X{display[1:]}"), "Xvfb", server)
        yield server
    finally:
        for login in server.accounts:
            remove_account(login)
        for proc in reversed(server.procs):
            proc.terminate()
        for proc in server.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)


def _wait(ready: object, what: str, server: XrdpServer, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not ready():  # type: ignore[operator]
        for proc in server.procs:
            if proc.poll() is not None:
                raise Unavailable(f"{proc.args[0]} exited with {proc.returncode}:\n{server.logs()}")
        if time.monotonic() > deadline:
            raise Unavailable(f"{what} did not start within {timeout:g} s:\n{server.logs()}")
        time.sleep(0.1)


if __name__ == "__main__":  # a manual check: start the server, print what a client needs
    with xrdp_server() as srv:
        print(f"xrdp on 127.0.0.1:{srv.port}, client display {srv.display}, cert {srv.fingerprint}")
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            time.sleep(3600)
