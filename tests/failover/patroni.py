"""The PostgreSQL variant of the failover layout: two PostgreSQL nodes (the machine's server, 15 here) managed by Patroni, a
one-node etcd for its leader lock, and HAProxy running ``deploy/haproxy/haproxy-patroni.cfg``
(addresses rewritten only), for ``make failover-test-pg``.

Patroni does not fail back: after the primary's node dies, the replica is promoted when the
leader key expires (``ttl``), and the old primary rejoins as a replica (``pg_rewind``). The "two
writers" check samples both nodes every 0.1 s: a node takes the application's writes when it is
not in recovery and the transactions committed in the application's database (``rpa``) grow; two
such nodes in the same interval would be two writers. (The WAL position is no proof: a crashed
primary that restarts writes its end-of-recovery checkpoint before Patroni makes it a replica.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from tests.failover import layout
from tests.failover.layout import HAPROXY, Proc, Secrets, free_port, say, wait_for

if TYPE_CHECKING:
    from tests.failover.__main__ import Load, Run


def pg_bin() -> Path:
    """The machine's PostgreSQL server binaries (the newest installed major version)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name)
    )
    if not found:
        raise RuntimeError("no PostgreSQL server under /usr/lib/postgresql (apt-get install postgresql)")
    return found[-1].parent


# Leader key TTL and loop: the fail-over takes about ttl seconds after the primary's node dies.
# Patroni needs loop_wait + 2 * retry_timeout <= ttl.
TTL_S, LOOP_WAIT_S, RETRY_TIMEOUT_S = 10, 2, 4


def rest(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


class PgNode:
    def __init__(self, name: str, work: Path) -> None:
        self.name = name
        self.dir = work / name
        self.port = free_port()
        self.rest_port = free_port()
        self.proc: Proc | None = None

    def primary(self) -> bool:
        return rest(self.rest_port, "/primary") == 200

    def postmaster(self) -> psutil.Process | None:
        """The node's PostgreSQL server: Patroni starts it detached (not its child), so the node's
        crash must kill it too. Its pid is the first line of ``postmaster.pid``."""
        try:
            pid = int((self.dir / "data" / "postmaster.pid").read_text().split()[0])
            proc = psutil.Process(pid)
        except (OSError, ValueError, IndexError, psutil.Error):
            return None
        return proc if str(self.dir) in " ".join(proc.cmdline()) else None

    def kill(self) -> None:
        """The node crashes: Patroni and PostgreSQL with all its processes, SIGKILL."""
        server = self.postmaster()
        family = [server, *server.children(recursive=True)] if server is not None else []
        if self.proc is not None:
            self.proc.kill()
        for p in family:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(family, timeout=10)

    def replica(self) -> bool:
        return rest(self.rest_port, "/replica") == 200


class Patroni:
    def __init__(self, work: Path, secrets_: Secrets) -> None:
        self.work = work / "patroni"
        self.work.mkdir(parents=True)
        self.secrets = secrets_
        self.etcd_port, self.etcd_peer = free_port(), free_port()
        self.nodes = [PgNode("pg1", self.work), PgNode("pg2", self.work)]
        self.proxy_port = free_port()
        self.stats_port = free_port()
        self.etcd: Proc | None = None
        self.proxy: Proc | None = None
        self.samples: list[tuple[float, str, bool, int | None]] = []
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    def _config(self, node: PgNode) -> str:
        s = self.secrets
        config: dict[str, Any] = {
            "scope": "rpa",
            "name": node.name,
            "restapi": {
                "listen": f"127.0.0.1:{node.rest_port}",
                "connect_address": f"127.0.0.1:{node.rest_port}",
            },
            "etcd3": {"hosts": f"127.0.0.1:{self.etcd_port}"},
            "bootstrap": {
                "dcs": {
                    "ttl": TTL_S,
                    "loop_wait": LOOP_WAIT_S,
                    "retry_timeout": RETRY_TIMEOUT_S,
                    "maximum_lag_on_failover": 1048576,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "parameters": {"wal_level": "replica", "hot_standby": "on", "max_connections": 300},
                    },
                },
                "initdb": [{"encoding": "UTF8"}, "data-checksums"],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{node.port}",
                "connect_address": f"127.0.0.1:{node.port}",
                "data_dir": str(node.dir / "data"),
                "bin_dir": str(pg_bin()),
                "pgpass": str(node.dir / "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres", "password": s.admin_password},
                    "replication": {"username": "replicator", "password": s.sst_password},
                    "rewind": {"username": "rewinder", "password": s.sst_password},
                },
                "parameters": {"unix_socket_directories": str(node.dir), "shared_buffers": "64MB"},
                "pg_hba": [
                    "local all all trust",
                    "host replication replicator 127.0.0.1/32 scram-sha-256",
                    "host all all 127.0.0.1/32 scram-sha-256",
                ],
            },
        }
        return json.dumps(config, indent=1)  # JSON is YAML

    def build(self) -> None:
        t0 = time.monotonic()
        os.chmod(self.work.parent, 0o755)  # noqa: S103 - the postgres user must reach its directories
        os.chmod(self.work, 0o755)  # noqa: S103
        self.etcd = Proc(
            "etcd",
            [
                "/usr/bin/etcd",
                "--name",
                "etcd1",
                "--data-dir",
                str(self.work / "etcd"),
                "--listen-client-urls",
                f"http://127.0.0.1:{self.etcd_port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{self.etcd_port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{self.etcd_peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{self.etcd_peer}",
                "--initial-cluster",
                f"etcd1=http://127.0.0.1:{self.etcd_peer}",
            ],
            layout._base_env(),
            self.work / "etcd.log",
        )
        self.etcd.start()
        wait_for(lambda: layout.answers(self.etcd_port), 30, "etcd listens", self.etcd)
        for i, node in enumerate(self.nodes):
            node.dir.mkdir()
            cfg = node.dir / "patroni.yml"
            layout.write_private(cfg, self._config(node))
            shutil.chown(node.dir, "postgres", "postgres")
            shutil.chown(cfg, "postgres", "postgres")
            node.proc = Proc(
                node.name,
                [
                    "/usr/bin/setpriv",
                    "--reuid=postgres",
                    "--regid=postgres",
                    "--init-groups",
                    "/usr/bin/patroni",
                    str(cfg),
                ],
                {**layout._base_env(), "HOME": str(node.dir)},
                node.dir / "patroni.log",
            )
            node.proc.start()
            if i == 0:
                wait_for(node.primary, 90, f"{node.name} is the primary", node.proc, every=0.3)
        wait_for(self.nodes[1].replica, 120, "pg2 replicates", self.nodes[1].proc, every=0.3)
        shipped = (layout.DEPLOY / "haproxy" / "haproxy-patroni.cfg").read_text()
        cfg_text = layout.rewrite_haproxy(
            shipped,
            {5432: self.proxy_port, 8405: self.stats_port},
            {n.name: (n.port, n.rest_port) for n in self.nodes},
        )
        (self.work / "haproxy-patroni.cfg").write_text(cfg_text)
        self.proxy = Proc(
            "dbproxy",
            [*HAPROXY, str(self.work / "haproxy-patroni.cfg")],
            layout._base_env(),
            self.work / "dbproxy.log",
        )
        self.proxy.start()
        # HAProxy takes every server for up until its checks say otherwise: wait until the replica
        # is out too, or a first connection may land on it (read-only).
        wait_for(
            lambda: (w := self.writers()).get("pg1") == "UP" and w.get("pg2", "").startswith("DOWN"),
            30,
            "the balancer sends to pg1 only",
            self.proxy,
        )
        asyncio.run(self._probe_table())
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        say(
            f"Patroni: pg1 :{self.nodes[0].port}, pg2 :{self.nodes[1].port}, balancer :{self.proxy_port} up in {time.monotonic() - t0:.1f} s"
        )

    async def _admin(self, port: int, timeout: float = 60) -> Any:
        """An asyncpg connection as the ``postgres`` superuser to the server on ``port``."""
        import asyncpg

        return await asyncpg.connect(
            host="127.0.0.1",
            port=port,
            user="postgres",
            password=self.secrets.admin_password,
            database="postgres",
            timeout=timeout,
        )

    async def _probe_table(self) -> None:
        conn = await self._admin(self.proxy_port)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS beat (id bigserial PRIMARY KEY, at double precision NOT NULL)"
            )
        finally:
            await conn.close()

    def writers(self) -> dict[str, str]:
        return {
            sv: row["status"]
            for (px, sv), row in layout.stats(self.stats_port).items()
            if px == "postgres" and sv in ("pg1", "pg2")
        }

    def _sample(self) -> None:

        async def one(node: PgNode) -> tuple[bool, int | None] | None:
            try:
                conn = await self._admin(node.port, timeout=0.5)
            except Exception:
                return None
            try:
                row = await conn.fetchrow(
                    "SELECT pg_is_in_recovery() AS r,"
                    " (SELECT xact_commit FROM pg_stat_database WHERE datname = 'rpa') AS commits"
                )
                return bool(row["r"]), (int(row["commits"]) if row["commits"] is not None else None)
            except Exception:
                return None
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()

        async def loop() -> None:
            while not self._stop.is_set():
                t = time.time()
                for node, got in zip(
                    self.nodes, await asyncio.gather(*(one(n) for n in self.nodes)), strict=True
                ):
                    if got is not None:
                        self.samples.append((t, node.name, got[0], got[1]))
                await asyncio.sleep(0.1)

        asyncio.run(loop())

    def writer_check(self) -> dict[str, Any]:
        self._stop.set()
        # Per node: the intervals between consecutive samples in which it was primary and committed
        # transactions in the application's database (a drop is a restart's reset: not counted).
        last: dict[str, tuple[float, int]] = {}
        writing: dict[str, list[tuple[float, float]]] = {n.name: [] for n in self.nodes}
        for t, name, in_recovery, commits in self.samples:
            if in_recovery or commits is None:
                last.pop(name, None)
                continue
            if name in last and commits > last[name][1]:
                writing[name].append((last[name][0], t))
            last[name] = (t, commits)
        a, b = writing["pg1"], writing["pg2"]
        overlaps = [(x, y) for x in a for y in b if x[0] < y[1] and y[0] < x[1]]
        sequence = []
        for _start, _end, name in sorted([(s, e, n) for n, iv in writing.items() for s, e in iv]):
            if not sequence or sequence[-1][0] != name:
                sequence.append([name, 0])
            sequence[-1][1] += 1
        return {
            "method": "both nodes sampled every 0.1 s: not in recovery and commits in the rpa database growing = taking writes",
            "samples": len(self.samples),
            "sequence": [f"{n} x{c} intervals" for n, c in sequence],
            # pg1 (bootstrapped) writes, then pg2 once promoted: anything else, even no sample at all,
            # fails the run rather than passing it.
            "verdict": f"{len(overlaps)} intervals with two writers"
            if overlaps
            else "one writer at a time"
            if [n for n, _ in sequence] == ["pg1", "pg2"]
            else f"expected writers pg1 then pg2, found {[n for n, _ in sequence]}",
        }

    def primary(self) -> PgNode:
        return next(n for n in self.nodes if n.primary())

    async def faults(self, run: Run, load: Load, settle: float) -> None:
        old = await asyncio.to_thread(self.primary)
        other = next(n for n in self.nodes if n is not old)
        assert old.proc is not None
        run.begin(f"SIGKILL database primary ({old.name}: Patroni and PostgreSQL)")
        old.kill()  # here, not in a thread: no write may slip in between the fault's start and the kill
        promoted_at = await run.until(other.primary, 60, f"{other.name} promoted")
        await run.until(lambda: run.db_written_since(load, promoted_at), 60, "the database is written again")
        await asyncio.sleep(settle)
        fault = run.begin(f"restart {old.name} (rejoins as a replica)")
        await asyncio.to_thread(old.proc.start)
        await run.until(old.replica, 120, f"{old.name} replicates again")
        fault.note = f"{old.name} a replica again after {time.time() - fault.t0:.1f} s"
        await asyncio.sleep(settle)

    def processes(self) -> list[Proc]:
        return [p for p in (self.proxy, *(n.proc for n in self.nodes), self.etcd) if p is not None]

    def close(self) -> None:
        for node in self.nodes:
            node.kill()

    def run_db_probe(self, load: Load) -> None:
        """The bare database's recovery through the balancer: one insert every 0.05 s."""

        async def loop() -> None:
            conn = None
            while not load._db_stop.is_set():
                t = time.time()
                try:
                    if conn is None:
                        conn = await self._admin(self.proxy_port, timeout=1)
                    await conn.execute("INSERT INTO beat (at) VALUES ($1)", t, timeout=2)
                    load.db_beats.append((t, time.time(), True))
                except Exception:
                    load.db_beats.append((t, time.time(), False))
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            conn.terminate()
                    conn = None
                await asyncio.sleep(0.05)
            if conn is not None:
                await conn.close()

        asyncio.run(loop())
