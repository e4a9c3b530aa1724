"""The rdp driver's client command line: pinned certificate or the explicit opt-out, the robot's
shell with the door, never a secret."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from rpa_common.models.enums import ShellMode
from rpa_common.nats.messages import RdpTarget
from rpa_coordinator.door import RobotDoor
from rpa_coordinator.drivers import RdpDriver, SessionError, SessionRequest


def request(**server: object) -> SessionRequest:
    return SessionRequest(
        session_id=uuid.uuid4(),
        robot_id=uuid.uuid4(),
        login="rpa01",
        domain=None,
        password="Pa55word!",
        robot_key="rbk_0123456789ab_secret",
        gateway_url="ws://gw/robot/v1",
        server=RdpTarget(host="ts.corp", port=3390, **server),  # type: ignore[arg-type]
    )


def driver(tmp_path: Path) -> RdpDriver:
    return RdpDriver(
        str(tmp_path), RobotDoor(tmp_path / "door.sock"), robot_shell="rpa-robot run --unattended"
    )


def test_the_client_pins_the_certificate_and_gets_no_secret(tmp_path: Path) -> None:
    req = request(cert_fingerprint="SHA256:AB:CD")
    argv = driver(tmp_path).client_argv(req)
    assert argv[:5] == ["xfreerdp", "/v:ts.corp:3390", "/u:rpa01", "/from-stdin:force", "/sec:tls"]
    assert "/cert:deny,fingerprint:sha256:ab:cd" in argv and "/cert:ignore" not in argv
    assert f"/shell:rpa-robot run --unattended --door {tmp_path / 'door.sock'}" in argv
    assert not any("Pa55word!" in a or "rbk_" in a for a in argv)
    bare = driver(tmp_path).client_argv(request(cert_fingerprint="ab:cd"))
    assert "/cert:deny,fingerprint:sha256:ab:cd" in bare  # sha256 when the hash is not named


def test_the_opt_out_must_be_explicit(tmp_path: Path) -> None:
    assert "/cert:ignore" in driver(tmp_path).client_argv(request(cert_ignore=True))
    with pytest.raises(SessionError, match="no certificate fingerprint to pin"):
        driver(tmp_path).client_argv(request())


def test_startup_mode_leaves_the_robot_to_the_accounts_session_start_up(tmp_path: Path) -> None:
    argv = driver(tmp_path).client_argv(
        request(cert_ignore=True, shell_mode=ShellMode.STARTUP, shell_command="ignored")
    )
    assert not any(a.startswith("/shell:") for a in argv)
    custom = driver(tmp_path).client_argv(
        request(cert_ignore=True, shell_command="/opt/robot/bin/rpa-robot run")
    )
    assert f"/shell:/opt/robot/bin/rpa-robot run --door {tmp_path / 'door.sock'}" in custom
    with_domain = request(cert_ignore=True)
    with_domain.domain = "CORP"
    assert "/d:CORP" in driver(tmp_path).client_argv(with_domain)


async def test_an_account_without_an_os_user_fails_before_any_client_starts(tmp_path: Path) -> None:
    req = request(cert_ignore=True)
    req.login = f"no_such_user_{uuid.uuid4().hex[:8]}"
    with pytest.raises(SessionError, match="no OS user"):
        await driver(tmp_path).open(req)
