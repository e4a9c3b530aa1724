"""The Galera health agent HAProxy asks before sending writes to a node."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from rpa_common.dbcheck import Node, judge, make_server
from tests.conftest import MARIADB_URL, require_backend
from tests.support import free_port

SYNCED_PRIMARY = {
    "wsrep_connected": "ON",
    "wsrep_cluster_status": "Primary",
    "wsrep_ready": "ON",
    "wsrep_local_state": "4",
    "wsrep_local_state_comment": "Synced",
}


def test_only_a_synced_node_of_the_primary_component_takes_writes() -> None:
    assert judge(SYNCED_PRIMARY).ok
    donor = {**SYNCED_PRIMARY, "wsrep_local_state": "2", "wsrep_local_state_comment": "Donor/Desynced"}
    assert not judge(donor).ok
    assert "Donor/Desynced" in judge(donor).reason
    assert "no quorum" in judge({**SYNCED_PRIMARY, "wsrep_cluster_status": "non-Primary"}).reason
    assert not judge({**SYNCED_PRIMARY, "wsrep_ready": "OFF"}).ok
    assert not judge({**SYNCED_PRIMARY, "wsrep_connected": "OFF"}).ok
    assert not judge({}).ok


@pytest.fixture
def agent(request: pytest.FixtureRequest) -> Iterator[str]:
    require_backend("mariadb")
    parts = urlsplit(MARIADB_URL)
    node = Node(
        parts.hostname or "127.0.0.1",
        parts.port or 3306,
        parts.username or "root",
        parts.password or "",
        allow_standalone=getattr(request, "param", False),
    )
    server = make_server(node, "127.0.0.1", free_port())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_a_server_without_galera_is_not_a_writer(agent: str) -> None:
    # The suite's MariaDB is a single server (wsrep off): HAProxy must not take it for a cluster node.
    resp = httpx.get(agent)
    assert resp.status_code == 503
    assert "wsrep is off" in resp.text


@pytest.mark.parametrize("agent", [True], indirect=True)
def test_standalone_allowed_when_asked(agent: str) -> None:
    resp = httpx.get(agent)
    assert resp.status_code == 200, resp.text
    assert httpx.head(agent).status_code == 200


def test_an_unreachable_node_is_down() -> None:
    node = Node("127.0.0.1", free_port(), "rpa_check", "", timeout_s=1.0)
    verdict = node.check()
    assert not verdict.ok and verdict.reason.startswith("no connection")
