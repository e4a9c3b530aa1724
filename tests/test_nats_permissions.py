"""Per-service NATS users with subject permissions, proven against a real nats-server.

Each service may publish what it produces and subscribe to what it consumes, nothing else: a
gateway cannot publish what only the scheduler publishes (a coordinator's command), and no one
connects without a password.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from rpa_common.nats import subjects
from rpa_common.nats.client import connect
from rpa_common.nats.permissions import JETSTREAM_SUBJECTS, PERMISSIONS, authorization_block
from rpa_common.settings import Settings
from tests.e2e.nats_outage import NATS_BIN, _answers
from tests.support import free_port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """nats-server with the product's authorization block, on a port of its own."""
    folder = tmp_path_factory.mktemp("nats-auth")
    passwords = {user: secrets.token_urlsafe(16) for user in PERMISSIONS}
    port = free_port()
    config = folder / "nats.conf"
    config.write_text(f"listen: 127.0.0.1:{port}\n" + authorization_block(passwords))
    log = (folder / "nats.log").open("w")
    proc = subprocess.Popen([str(NATS_BIN), "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(150):
            if _answers(port):
                break
            assert proc.poll() is None, (folder / "nats.log").read_text()
            subprocess.run(["sleep", "0.1"], check=True)
        yield f"nats://127.0.0.1:{port}", passwords
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


class Peer:
    """One service's connection, remembering the errors the server sent it."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: Client | None = None

    async def connect(self, url: str, user: str, password: str) -> Peer:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        self.nc = await nats.connect(
            url, user=user, password=password, error_cb=on_error, max_reconnect_attempts=0
        )
        return self

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()


@pytest.fixture
async def peers(server: tuple[str, dict[str, str]]) -> AsyncIterator[dict[str, Peer]]:
    url, passwords = server
    connected = {user: await Peer().connect(url, user, passwords[user]) for user in PERMISSIONS}
    yield connected
    for peer in connected.values():
        await peer.close()


def _concrete(subject: str) -> str:
    return subject.replace("*", "gw-1")


def _allows(pattern: str, subject: str) -> bool:
    a, b = pattern.split("."), subject.split(".")
    return len(a) == len(b) and all(x in ("*", y) for x, y in zip(a, b, strict=True))


async def _delivered(publisher: Client, subscriber: Client, subject: str) -> bool:
    """True when a message ``publisher`` sends on ``subject`` reaches ``subscriber``. It publishes a few
    times over two seconds: nats-py may send a flush's PING before a SUB it was just given, so one
    message right after subscribing can miss a subscription the server has not seen yet."""
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_message(msg: nats.aio.msg.Msg) -> None:
        await got.put(msg.data)

    sub = await subscriber.subscribe(subject, cb=on_message)
    await subscriber.flush()
    try:
        for _ in range(10):
            await publisher.publish(subject, b"probe")
            await publisher.flush()
            try:
                await asyncio.wait_for(got.get(), 0.2)
                return True
            except TimeoutError:
                continue
        return False
    finally:
        await sub.unsubscribe()


async def test_every_permitted_flow_is_delivered(peers: dict[str, Peer]) -> None:
    for user, perms in PERMISSIONS.items():
        for pattern in perms.publish:
            if pattern in JETSTREAM_SUBJECTS:  # JetStream's: see the event stream test below
                continue
            subject = _concrete(pattern)
            consumers = [u for u, p in PERMISSIONS.items() if any(_allows(s, subject) for s in p.subscribe)]
            assert consumers, f"{user} publishes {subject}, which no service subscribes to"
            consumer = peers[consumers[0]].nc
            assert consumer is not None and peers[user].nc is not None
            assert await _delivered(peers[user].nc, consumer, subject), (
                f"{user} -> {consumers[0]}: {subject}",
                {u: p.errors for u, p in peers.items()},
            )
    for user, peer in peers.items():
        assert not peer.errors, f"{user} was refused a permitted flow: {peer.errors}"


async def test_a_gateway_cannot_publish_what_only_the_scheduler_publishes(peers: dict[str, Peer]) -> None:
    gateway, coordinator = peers["gateway"].nc, peers["coordinator"].nc
    assert gateway is not None and coordinator is not None
    command = subjects.coordinator_inbox("c-1")  # "open a session": the scheduler's to give
    assert not await _delivered(gateway, coordinator, command)
    await asyncio.sleep(0.2)
    assert any("permissions violation" in e.lower() for e in peers["gateway"].errors), peers["gateway"].errors

    # Nor announce a trigger change (the API's), nor listen to the API's grant changes.
    scheduler = peers["scheduler"].nc
    assert scheduler is not None
    assert not await _delivered(gateway, scheduler, subjects.TRIGGER_CHANGED)
    peers["coordinator"].errors.clear()
    await coordinator.subscribe(subjects.JOB_CREATED)
    await coordinator.flush()
    await asyncio.sleep(0.2)
    assert any("permissions violation" in e.lower() for e in peers["coordinator"].errors)


async def test_no_connection_without_the_right_password(
    server: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, passwords = server
    for user, password in ((None, None), ("gateway", "wrong"), ("api", passwords["gateway"])):
        with pytest.raises(Exception, match=r"(?i)authorization"):
            await nats.connect(
                url, user=user, password=password, max_reconnect_attempts=0, allow_reconnect=False
            )

    # The services' own connect, with the password from a file (a container secret).
    secret = tmp_path / "nats-password"
    secret.write_text(passwords["scheduler"] + "\n")
    settings = Settings(nats_url=url, nats_user="scheduler", nats_password_file=str(secret))  # type: ignore[call-arg]
    nc = await connect(settings.nats_url, "rpa-test", *settings.nats_credentials())
    try:
        await nc.publish(subjects.JOB_CREATED, b"{}")
        await nc.flush()
    finally:
        await nc.close()


def test_every_subject_has_a_publisher() -> None:
    named = [
        v for k, v in vars(subjects).items() if k.isupper() and isinstance(v, str) and v.startswith("rpa.")
    ]
    named += [subjects.gateway_inbox("x"), subjects.coordinator_inbox("x")]
    for subject in named:
        if "*" in subject:
            continue
        publishers = [u for u, p in PERMISSIONS.items() if any(_allows(s, subject) for s in p.publish)]
        assert publishers, f"{subject}: no service may publish it (add it to rpa_common.nats.permissions)"


DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_the_shipped_auth_file_is_the_generated_one() -> None:
    assert (DEPLOY / "nats" / "auth.conf").read_text() == authorization_block(), (
        "deploy/nats/auth.conf is stale: python -m rpa_common.nats.permissions > deploy/nats/auth.conf"
    )


async def test_the_shipped_config_runs_in_a_real_nats_server(tmp_path: Path) -> None:
    """deploy/nats/nats.conf as the compose files mount it, passwords from the environment (only
    the ports and the JetStream folder given for this machine, as the compose files give theirs)."""
    # As the README says to make them: a letter first. nats-server parses a variable's value as a
    # config token, so one like "1.eQ..." can read as a malformed number and the server does not start.
    passwords = {user: "p" + secrets.token_urlsafe(12) for user in PERMISSIONS}
    env = {f"NATS_PASSWORD_{user.upper()}": pw for user, pw in passwords.items()}
    port, monitor = free_port(), free_port()
    log = (tmp_path / "nats.log").open("w")
    args = ["-c", str(DEPLOY / "nats" / "nats.conf"), "-p", str(port), "-m", str(monitor)]
    proc = subprocess.Popen(
        [str(NATS_BIN), *args, "-js", "-sd", str(tmp_path / "js")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        for _ in range(150):
            if _answers(port):
                break
            assert proc.poll() is None, (tmp_path / "nats.log").read_text()
            await asyncio.sleep(0.1)
        url = f"nats://127.0.0.1:{port}"
        gateway = await Peer().connect(url, "gateway", passwords["gateway"])
        scheduler = await Peer().connect(url, "scheduler", passwords["scheduler"])
        try:
            assert gateway.nc is not None and scheduler.nc is not None
            assert await _delivered(scheduler.nc, gateway.nc, subjects.gateway_inbox("g-1"))
            assert not await _delivered(gateway.nc, scheduler.nc, subjects.TRIGGER_CHANGED)
        finally:
            await gateway.close()
            await scheduler.close()
        with pytest.raises(Exception, match=r"(?i)authorization"):
            await nats.connect(url, max_reconnect_attempts=0, allow_reconnect=False)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def test_every_compose_service_connects_as_its_own_nats_user() -> None:
    yaml = pytest.importorskip("yaml")
    users = {
        "rpa_api": "api",
        "rpa_gateway": "gateway",
        "rpa_scheduler": "scheduler",
        "rpa_coordinator": "coordinator",
    }
    for path in sorted((DEPLOY / "compose").glob("*.yml")):
        doc = yaml.safe_load(path.read_text())
        seen = set()
        for name, service in doc["services"].items():
            command = service.get("command") or []
            module = (
                command[2]
                if len(command) > 3 and command[:2] == ["python", "-m"] and command[3] == "serve"
                else None
            )
            if module not in users:
                continue
            env = service.get("environment") or {}
            user = users[module]
            assert env.get("RPA_NATS_USER") == user, f"{path.name}: {name} must connect to NATS as {user!r}"
            assert (
                env.get("RPA_NATS_PASSWORD")
                == f"${{RPA_NATS_PASSWORD_{user.upper()}:?set RPA_NATS_PASSWORD_{user.upper()}}}"
            )
            seen.add(user)
        assert {"api", "gateway", "scheduler"} <= seen, (path.name, seen)
        for name, service in doc["services"].items():
            if str(service.get("image", "")).startswith("nats:"):
                assert "/etc/nats/nats.conf" in service["command"], (
                    f"{path.name}: {name} runs without the users"
                )
                assert all(f"NATS_PASSWORD_{u.upper()}" in service["environment"] for u in PERMISSIONS)


async def test_the_scheduler_feeds_the_event_stream_and_the_api_reads_it(tmp_path: Path) -> None:
    """With JetStream on and the product's users: the scheduler creates the stream and publishes
    events (publish acks on its inbox); the API reads them with an ordered consumer; a gateway can
    do neither."""
    import json as _json

    from nats.js.api import DeliverPolicy

    from rpa_common import events as ev
    from rpa_scheduler.relay import ensure_stream

    passwords = {user: secrets.token_urlsafe(16) for user in PERMISSIONS}
    port = free_port()
    config = tmp_path / "nats.conf"
    config.write_text(
        f"listen: 127.0.0.1:{port}\njetstream {{store_dir: {_json.dumps(str(tmp_path / 'js'))}}}\n"
        + authorization_block(passwords)
    )
    proc = subprocess.Popen(
        [str(NATS_BIN), "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(150):
            if _answers(port):
                break
            await asyncio.sleep(0.1)
        url = f"nats://127.0.0.1:{port}"
        peers = {u: await Peer().connect(url, u, passwords[u]) for u in ("scheduler", "api", "gateway")}
        try:
            sched, api, gw = (peers[u].nc for u in ("scheduler", "api", "gateway"))
            assert sched is not None and api is not None and gw is not None
            await ensure_stream(sched, 3600)
            account = "00000000-0000-0000-0000-000000000001"
            ack = await sched.jetstream().publish(
                ev.subject(account, "job.state"), b"{}", headers={"Nats-Msg-Id": "1"}
            )
            assert ack.seq == 1
            sub = await api.jetstream().subscribe(
                ev.account_subjects(account),
                stream=ev.STREAM,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.ALL,
            )
            msg = await sub.next_msg(timeout=5)
            assert msg.metadata.sequence.stream == 1
            await sub.unsubscribe()
            with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
                await gw.jetstream().publish(ev.subject(account, "job.state"), b"{}", timeout=1)
        finally:
            for peer in peers.values():
                await peer.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
