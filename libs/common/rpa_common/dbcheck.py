"""Health agent of a Galera node for the database balancer: ``200`` only when it may take writes.

HAProxy's own ``mysql-check`` only proves that a node accepts a login; a Galera node that lost its
quorum (non-Primary) or is still receiving a state transfer (Joiner, Donor) accepts logins too, and
writes sent there fail or block. This agent answers HAProxy's ``option httpchk`` with ``200`` when
the node is Synced (``wsrep_local_state`` 4), part of the Primary component, ready and writable,
and ``503`` with the reason otherwise::

    RPA_DBCHECK_USER=rpa_check RPA_DBCHECK_PASSWORD=... \\
        python -m rpa_common.dbcheck --node 127.0.0.1:3306 --listen 127.0.0.1:9200

The check account needs no privilege at all (``CREATE USER rpa_check ... ; `` and nothing else: any
account can read ``SHOW GLOBAL STATUS``). Its password comes from the environment, never the
command line. One process per database node, next to it (a side-car container, or a service of the
host); it holds no connection between checks, so it never keeps a dead node's socket.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pymysql

SYNCED = "4"
STATUS_QUERY = (
    "SHOW GLOBAL STATUS WHERE Variable_name IN "
    "('wsrep_local_state', 'wsrep_local_state_comment', 'wsrep_cluster_status', 'wsrep_ready', "
    "'wsrep_connected')"
)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str


@dataclass(frozen=True)
class Node:
    host: str
    port: int
    user: str
    password: str
    timeout_s: float = 2.0
    allow_standalone: bool = False

    def check(self) -> Verdict:
        try:
            conn = pymysql.connect(
                host=self.host,
                port=self.port,
                user=self.user,
                password=self.password,
                connect_timeout=self.timeout_s,
                read_timeout=self.timeout_s,
                write_timeout=self.timeout_s,
            )
        except pymysql.MySQLError as exc:
            return Verdict(False, f"no connection: {exc.args[0] if exc.args else type(exc).__name__}")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT @@read_only, @@wsrep_on")
                row = cur.fetchone()
                read_only, wsrep_on = (int(row[0]), int(row[1])) if row else (1, 0)
                cur.execute(STATUS_QUERY)
                status = {str(name): str(value) for name, value in cur.fetchall()}
        except pymysql.MySQLError as exc:
            return Verdict(False, f"status query failed: {exc.args[0] if exc.args else type(exc).__name__}")
        finally:
            conn.close()
        if read_only:
            return Verdict(False, "read_only is ON")
        if not wsrep_on:
            if self.allow_standalone:
                return Verdict(True, "standalone (wsrep off), writable")
            return Verdict(False, "wsrep is off: not a Galera node")
        return judge(status)


def judge(status: dict[str, str]) -> Verdict:
    """The verdict from a node's ``wsrep_*`` status variables."""
    if status.get("wsrep_connected") != "ON":
        return Verdict(False, "not connected to the cluster")
    if status.get("wsrep_cluster_status") != "Primary":
        return Verdict(False, f"cluster status {status.get('wsrep_cluster_status', '?')} (no quorum)")
    if status.get("wsrep_ready") != "ON":
        return Verdict(False, "wsrep not ready")
    if status.get("wsrep_local_state") != SYNCED:
        return Verdict(False, f"state {status.get('wsrep_local_state_comment', '?')}, not Synced")
    return Verdict(True, "Synced, Primary")


def make_server(node: Node, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer(body=True)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def _answer(self, *, body: bool) -> None:
            verdict = node.check()
            payload = (verdict.reason + "\n").encode()
            self.send_response(200 if verdict.ok else 503)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Connection", "close")
            self.end_headers()
            if body:
                self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            pass  # HAProxy checks every second or two: logging each would drown the log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def _host_port(value: str, default_port: int) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host:
        return value, default_port
    return host, int(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rpa-dbcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--node", default="127.0.0.1:3306", help="the database node to check, host:port")
    parser.add_argument("--listen", default="0.0.0.0:9200", help="where HAProxy asks, host:port")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per connection and query")
    parser.add_argument(
        "--allow-standalone", action="store_true", help="a node without Galera (wsrep off) counts as healthy"
    )
    args = parser.parse_args(argv)
    user = os.environ.get("RPA_DBCHECK_USER", "rpa_check")
    password = os.environ.get("RPA_DBCHECK_PASSWORD", "")
    node_host, node_port = _host_port(args.node, 3306)
    listen_host, listen_port = _host_port(args.listen, 9200)
    node = Node(node_host, node_port, user, password, args.timeout, args.allow_standalone)
    server = make_server(node, listen_host, listen_port)
    print(f"rpa-dbcheck: {node_host}:{node_port} answered on {listen_host}:{listen_port}", file=sys.stderr)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        thread.join()
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    main()
