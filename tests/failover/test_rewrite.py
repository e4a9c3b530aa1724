"""``make failover-test`` runs the SHIPPED configurations: its rewrite moves addresses, nothing else.

These run in ``make test`` (no server needed); the failover run itself is ``make failover-test``.
"""

from __future__ import annotations

import difflib
import re
import shutil
import subprocess

import pytest

from tests.failover.__main__ import outage
from tests.failover.layout import DEPLOY, rewrite_galera_cnf, rewrite_haproxy


def changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    """(old, new) for every line that differs; the line count must not change."""
    a, b = before.splitlines(), after.splitlines()
    assert len(a) == len(b), "\n".join(difflib.unified_diff(a, b, lineterm=""))
    return [(x, y) for x, y in zip(a, b, strict=True) if x != y]


GALERA = (DEPLOY / "haproxy" / "haproxy-galera.cfg").read_text()
EDGE = (DEPLOY / "haproxy" / "haproxy-failover.cfg").read_text()
PATRONI = (DEPLOY / "haproxy" / "haproxy-patroni.cfg").read_text()


def test_the_database_balancer_keeps_every_option_but_its_addresses() -> None:
    out = rewrite_haproxy(GALERA, {3306: 13306, 8405: 18405}, {"db1": (13307, 19201), "db2": (13308, 19202)})
    changes = changed_lines(GALERA, out)
    assert len(changes) == 4  # two binds, two servers
    for old, new in changes:
        # Every word but the addresses is the same, in the same order.
        words = lambda line: [w for w in line.split() if not re.search(r":\d+$|^\d+$", w)]  # noqa: E731
        assert words(old) == words(new), (old, new)
    assert "server db1 127.0.0.1:13307 check port 19201 on-marked-up shutdown-backup-sessions" in out
    assert "server db2 127.0.0.1:13308 check port 19202 backup" in out
    assert "bind 127.0.0.1:13306" in out


def test_the_edge_and_patroni_balancers_keep_every_option_but_their_addresses() -> None:
    out = rewrite_haproxy(
        EDGE,
        {8000: 18000, 8001: 18001, 8404: 18404},
        {"api1": (1, None), "api2": (2, None), "gw1": (3, None), "gw2": (4, None)},
    )
    changes = changed_lines(EDGE, out)
    assert len(changes) == 7
    assert "server gw1 127.0.0.1:3 check inter 1s fall 2 rise 2 on-marked-down shutdown-sessions" in out
    out = rewrite_haproxy(PATRONI, {5432: 15432, 8405: 18405}, {"pg1": (1, 11), "pg2": (2, 12)})
    assert len(changed_lines(PATRONI, out)) == 4
    assert "server pg2 127.0.0.1:2 check port 12" in out


def test_an_unknown_server_is_an_error_not_a_silent_skip() -> None:
    with pytest.raises(KeyError):
        rewrite_haproxy(GALERA, {3306: 1, 8405: 2}, {"db1": (1, 2)})


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_the_rewritten_balancer_is_valid_for_haproxy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "galera.cfg"
    cfg.write_text(rewrite_haproxy(GALERA, {3306: 13306, 8405: 18405}, {"db1": (1, 2), "db2": (3, 4)}))
    result = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_galera_settings_keep_the_shipped_timeouts_and_add_only_addresses() -> None:
    shipped = (DEPLOY / "galera" / "galera.cnf").read_text()
    out = rewrite_galera_cnf(shipped, [14567, 14577, 14587], listen=14567, ist=14568)
    changes = changed_lines(shipped, out)
    assert [old.split("=")[0] for old, _ in changes] == ["wsrep_cluster_address ", "wsrep_provider_options "]
    assert "wsrep_cluster_address = gcomm://127.0.0.1:14567,127.0.0.1:14577,127.0.0.1:14587" in out
    options = next(new for old, new in changes if old.startswith("wsrep_provider_options"))
    shipped_options = re.search(r'"(.*)"', changes[1][0])
    assert shipped_options is not None
    assert options.startswith(f'wsrep_provider_options = "{shipped_options.group(1)};')
    assert options.endswith(';gmcast.listen_addr=tcp://127.0.0.1:14567;ist.recv_addr=127.0.0.1:14568"')


def test_outage_is_the_longest_time_without_a_completed_write_from_the_fault_on() -> None:
    done = [9.5, 10.2, 10.4, 14.9, 15.0, 15.3]
    assert outage(10.0, 16.0, done) == pytest.approx(4.5)  # 10.4 -> 14.9
    assert outage(15.0, 16.0, done) == pytest.approx(0.7)  # 15.3 -> 16.0: the window's end counts
    assert outage(11.0, 12.0, done) == pytest.approx(1.0)  # nothing written at all
