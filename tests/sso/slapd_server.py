"""A throwaway OpenLDAP (Debian's ``slapd``) on a loopback port: generated config, data via slapadd.

It runs in the foreground (``-d 0``) as a child of the test, which kills it by pid at the end; the
machine's own slapd service, if any, is never touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SUFFIX = "dc=rpa,dc=test"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PW = "admin-secret-pw"
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")


def slapd_binary() -> str | None:
    for candidate in (shutil.which("slapd"), "/usr/sbin/slapd"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def _ldif(users: list[dict[str, str]], groups: dict[str, list[str]]) -> str:
    parts = [
        f"dn: {SUFFIX}\nobjectClass: top\nobjectClass: dcObject\nobjectClass: organization\no: rpa\ndc: rpa\n",
        f"dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n",
        f"dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n",
    ]
    for i, u in enumerate(users):
        lines = [
            f"dn: uid={u['uid']},ou=people,{SUFFIX}",
            "objectClass: inetOrgPerson",
            "objectClass: posixAccount",
            "objectClass: shadowAccount",
            f"uid: {u['uid']}",
            f"cn: {u['cn']}",
            f"sn: {u['cn'].split()[-1]}",
            f"mail: {u['uid']}@rpa.test",
            f"uidNumber: {10000 + i}",
            "gidNumber: 10000",
            f"homeDirectory: /home/{u['uid']}",
            f"userPassword: {u['password']}",
        ]
        if "shadowExpire" in u:
            lines.append(f"shadowExpire: {u['shadowExpire']}")
        parts.append("\n".join(lines) + "\n")
    for name, members in groups.items():
        lines = [f"dn: cn={name},ou=groups,{SUFFIX}", "objectClass: groupOfNames", f"cn: {name}"]
        lines += [f"member: uid={m},ou=people,{SUFFIX}" for m in members]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


class Slapd:
    def __init__(self, workdir: Path, users: list[dict[str, str]], groups: dict[str, list[str]]) -> None:
        binary = slapd_binary()
        assert binary is not None
        self.dir = workdir
        (workdir / "db").mkdir(parents=True, exist_ok=True)
        conf = workdir / "slapd.conf"
        schemas = "\n".join(
            f"include {SCHEMA_DIR / n}.schema" for n in ("core", "cosine", "nis", "inetorgperson")
        )
        conf.write_text(
            f"{schemas}\n"
            f"pidfile {workdir / 'slapd.pid'}\n"
            f"modulepath {MODULE_DIR}\nmoduleload back_mdb\n"
            "database mdb\nmaxsize 10485760\n"
            f'suffix "{SUFFIX}"\nrootdn "{ROOT_DN}"\nrootpw {ROOT_PW}\n'
            f"directory {workdir / 'db'}\n"
            # Passwords are for binding only; the rest is readable by any bound client.
            "access to attrs=userPassword by anonymous auth by * none\n"
            "access to * by users read by * none\n"
        )
        data = workdir / "data.ldif"
        data.write_text(_ldif(users, groups))
        subprocess.run(
            [binary.replace("slapd", "slapadd"), "-f", str(conf), "-l", str(data)],
            check=True,
            capture_output=True,
        )
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"ldap://127.0.0.1:{self.port}"
        self.log = open(workdir / "slapd.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [binary, "-f", str(conf), "-h", f"{self.url}/", "-d", "0"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ},
        )
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"slapd exited: {(workdir / 'slapd.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("slapd did not listen in 20 s") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
