"""Envelope encryption of credentials (``rpa_common.credentials``): keys, associated data, rotation
while readers and writers work, and services that refuse to start with a wrong or missing key.

The rotation and start tests use a database of their own (the rotation re-wraps every row of a
database), on PostgreSQL and on MariaDB.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.credentials import (
    CredentialUnreadable,
    Keyring,
    MasterKeyError,
    keyring_from_settings,
    open_password,
    parse_master_keys,
    password_of,
    seal_password,
)
from rpa_common.db.admin import create_database, drop_database
from rpa_common.db.engine import create_engine, session_factory
from rpa_common.db.uow import run_in_transaction
from rpa_common.models import Account, MasterKeyCheck, Resource, ResourceGroup, ResourceValue
from rpa_common.models.enums import ResourceKind, ResourceScope
from rpa_common.settings import Settings
from tests.conftest import NATS_URL, _with_db, admin_url_for, make_settings, migrate
from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent
K1 = base64.b64encode(os.urandom(32)).decode()
K2 = base64.b64encode(os.urandom(32)).decode()


def settings_with(url: str, keys: str = "", **extra: Any) -> Settings:
    return make_settings(url, credentials_master_keys=keys, **extra)


# Without a database ---------------------------------------------------------------------------------


def test_master_keys_are_parsed_strictly_and_never_echoed() -> None:
    assert [k for k, _ in parse_master_keys(f"a:{K1}, b:{K2}")] == ["a", "b"]
    assert [k for k, _ in parse_master_keys(f"# comment\na:{K1}\n\nb:{K2}\n")] == ["a", "b"]
    short = base64.b64encode(b"x" * 16).decode()
    for raw, words in (
        (f"a{K1}", "item 1"),
        (f"a:{short}", "32 bytes"),
        ("a:not base64!", "not valid base64"),
        (f"a:{K1},a:{K2}", "twice"),
        (f"bad id:{K1}", "item 1"),
    ):
        with pytest.raises(MasterKeyError) as err:
            parse_master_keys(raw)
        assert words in str(err.value)
        assert K1 not in str(err.value) and K2 not in str(err.value)


def test_production_needs_an_explicit_key_and_development_derives_one(tmp_path: Path) -> None:
    prod = Settings(
        environment="production",
        secret_key="s" * 40,
        encryption_keys=f"e:{K1}",
        db_url="postgresql://x@127.0.0.1/none",
    )
    with pytest.raises(MasterKeyError, match="production needs RPA_CREDENTIALS_MASTER_KEYS"):
        keyring_from_settings(prod)
    dev = Settings(environment="development")
    ring = keyring_from_settings(dev)
    assert ring.key_ids == ("dev",) and ring.derived
    other_secret = keyring_from_settings(
        Settings(environment="development", secret_key="another secret " * 3)
    )
    assert other_secret is not ring
    path = tmp_path / "keys"
    path.write_text(f"k2:{K2}\nk1:{K1}\n")
    from_file = keyring_from_settings(
        Settings(
            environment="production",
            secret_key="s" * 40,
            encryption_keys=f"e:{K1}",
            credentials_master_keys_file=str(path),
        )
    )
    assert from_file.key_ids == ("k2", "k1") and from_file.current_id == "k2"
    with pytest.raises(MasterKeyError, match="not both"):
        keyring_from_settings(
            Settings(credentials_master_keys=f"k1:{K1}", credentials_master_keys_file=str(path))
        )
    with pytest.raises(MasterKeyError, match="cannot be read"):
        keyring_from_settings(Settings(credentials_master_keys_file=str(tmp_path / "missing")))


def test_associated_data_binds_account_resource_and_value() -> None:
    settings = Settings(credentials_master_keys=f"k1:{K1}")
    ring = keyring_from_settings(settings)
    ring.checked = True  # proven against a database in the tests below; sealing itself needs none
    account, resource, value_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    v = ResourceValue(id=value_id, account_id=account, resource_id=resource)
    asyncio.run(seal_password(None, settings, v, "hunter2-ÄÖ"))  # type: ignore[arg-type]
    stored = {
        "secret_encrypted": v.secret_encrypted,
        "secret_nonce": v.secret_nonce,
        "data_key_wrapped": v.data_key_wrapped,
        "master_key_id": v.master_key_id,
    }
    assert b"hunter2" not in (v.secret_encrypted or b"")
    assert (
        open_password(ring, account_id=account, resource_id=resource, value_id=value_id, **stored)
        == "hunter2-ÄÖ"
    )
    for ids in (
        {"account_id": uuid.uuid4(), "resource_id": resource, "value_id": value_id},
        {"account_id": account, "resource_id": uuid.uuid4(), "value_id": value_id},
        {"account_id": account, "resource_id": resource, "value_id": uuid.uuid4()},
    ):
        with pytest.raises(CredentialUnreadable):
            open_password(ring, **ids, **stored)  # type: ignore[arg-type]
    tampered = dict(
        stored, secret_encrypted=bytes([stored["secret_encrypted"][0] ^ 1]) + stored["secret_encrypted"][1:]
    )  # type: ignore[index]
    with pytest.raises(CredentialUnreadable):
        open_password(ring, account_id=account, resource_id=resource, value_id=value_id, **tampered)  # type: ignore[arg-type]
    wrong = Keyring([("k1", base64.b64decode(K2))])
    with pytest.raises(CredentialUnreadable):
        open_password(wrong, account_id=account, resource_id=resource, value_id=value_id, **stored)


# With a database of their own -------------------------------------------------------------------------


@pytest.fixture
async def own_db(backend: str) -> AsyncIterator[str]:
    admin = admin_url_for(backend)
    name = f"rpa_cred_{backend[:2]}_{uuid.uuid4().hex[:8]}"
    await create_database(admin, name)
    url = _with_db(admin, name)
    await migrate(url)
    yield url
    await drop_database(admin, name)


async def _fill(settings: Settings, n: int) -> tuple[uuid.UUID, list[tuple[uuid.UUID, str]]]:
    """An account with ``n`` credential resources (one value each): (account id, [(value id, password)])."""
    engine = create_engine(settings, "tests", pool_size=2)
    account_id = uuid.uuid4()
    made: list[tuple[uuid.UUID, str]] = []
    try:

        async def work(s: AsyncSession) -> None:
            s.add(Account(id=account_id, name=f"acc-{account_id.hex[:8]}"))
            group = ResourceGroup(id=uuid.uuid4(), account_id=account_id, name="g")
            s.add(group)
            await s.flush()
            for i in range(n):
                res = Resource(
                    id=uuid.uuid4(),
                    account_id=account_id,
                    group_id=group.id,
                    name=f"c{i}",
                    kind=ResourceKind.CREDENTIALS,
                )
                s.add(res)
                v = ResourceValue(
                    id=uuid.uuid4(),
                    account_id=account_id,
                    resource_id=res.id,
                    scope=ResourceScope.ALL,
                    scope_key="all",
                    login=f"u{i}",
                )
                password = f"pw-{i}-{uuid.uuid4().hex}"
                await seal_password(s, settings, v, password)
                s.add(v)
                made.append((v.id, password))
            await s.flush()

        await run_in_transaction(session_factory(engine), work)
    finally:
        await engine.dispose()
    return account_id, made


def _env(url: str, **values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPA_")}
    env.update(
        {"RPA_DB_URL": url, "RPA_NATS_URL": NATS_URL, "RPA_ENVIRONMENT": "test", "RPA_LOG_JSON": "false"}
    )
    env.update(values)
    return env


async def test_rotation_while_robots_read_and_people_write(own_db: str) -> None:
    old = settings_with(own_db, f"k1:{K1}")
    _, made = await _fill(old, 60)
    passwords = dict(made)
    new = settings_with(own_db, f"k2:{K2},k1:{K1}")
    engine = create_engine(new, "tests", pool_size=4)
    sessions = session_factory(engine)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rpa_common.credentials",
        "rotate",
        "--batch-size",
        "5",
        "--pause-ms",
        "100",
        env=_env(own_db, RPA_CREDENTIALS_MASTER_KEYS=f"k2:{K2},k1:{K1}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    reads = 0
    failures: list[str] = []
    key_ids_seen: set[str] = set()
    rewritten: dict[uuid.UUID, str] = {}

    async def read_all(s: AsyncSession) -> None:
        nonlocal reads
        rows = (await s.execute(sa.select(ResourceValue).order_by(ResourceValue.id))).scalars().all()
        for v in rows:
            expected = rewritten.get(v.id, passwords[v.id])
            try:
                got = await password_of(s, new, v)
            except Exception as exc:
                failures.append(f"{v.id}: {type(exc).__name__}")
                continue
            if got != expected and got != passwords[v.id]:
                failures.append(f"{v.id}: wrong password")
            key_ids_seen.add(str(v.master_key_id))
            reads += 1

    async def write_one(i: int) -> None:
        value_id = made[i][0]
        password = f"new-{i}-{uuid.uuid4().hex}"

        async def work(s: AsyncSession) -> None:
            v = (
                await s.execute(
                    sa.select(ResourceValue).where(ResourceValue.id == value_id).with_for_update()
                )
            ).scalar_one()
            await seal_password(s, new, v, password)

        await run_in_transaction(sessions, work)
        rewritten[value_id] = password

    try:
        i = 0
        while proc.returncode is None:
            await run_in_transaction(sessions, read_all)
            if i < 10:
                await write_one(i * 5)
                i += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), timeout=0.01)
        out, err = await proc.communicate()
        text = out.decode()
        assert proc.returncode == 0, (text, err.decode())
        assert not failures, failures[:5]
        assert reads >= 120 and {"k1", "k2"} <= key_ids_seen, (reads, key_ids_seen)
        progress = [line for line in text.splitlines() if line.startswith("rotated ")]
        assert len(progress) >= 4, text
        assert "rotation done" in text and K1 not in text and K2 not in text + err.decode()

        async def key_ids(s: AsyncSession) -> set[str | None]:
            return set((await s.execute(sa.select(ResourceValue.master_key_id))).scalars())

        assert await run_in_transaction(sessions, key_ids) == {"k2"}
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await engine.dispose()

    # Only the new key now: every credential reads, with its latest password.
    only_new = settings_with(own_db, f"k2:{K2}")
    engine = create_engine(only_new, "tests", pool_size=2)
    try:

        async def check(s: AsyncSession) -> None:
            for v in (await s.execute(sa.select(ResourceValue))).scalars():
                assert await password_of(s, only_new, v) == rewritten.get(v.id, passwords[v.id])

        await run_in_transaction(session_factory(engine), check)
    finally:
        await engine.dispose()
    # A re-run has nothing to do and says so.
    again = subprocess.run(
        [sys.executable, "-m", "rpa_common.credentials", "rotate"],
        env=_env(own_db, RPA_CREDENTIALS_MASTER_KEYS=f"k2:{K2},k1:{K1}"),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert again.returncode == 0 and "rotated 0 of 0" in again.stdout, again.stdout + again.stderr


async def _serve(url: str, port: int, **env: str) -> tuple[int | None, str]:
    """Start the API; (exit code or None if it served /healthz, its stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "rpa_api", "serve"],
        env=_env(url, RPA_API_PORT=str(port), RPA_API_WORKERS="1", **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    return proc.returncode, proc.stderr.read() if proc.stderr else ""
                try:
                    if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        return None, ""
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError("the API neither served nor exited")
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def test_a_wrong_or_missing_master_key_stops_the_service_at_start(own_db: str, tmp_path: Path) -> None:
    await _fill(settings_with(own_db, f"k1:{K1}"), 2)
    port = free_port()
    wrong = base64.b64encode(os.urandom(32)).decode()

    code, err = await _serve(own_db, port, RPA_CREDENTIALS_MASTER_KEYS=f"k1:{wrong}")
    assert code == 2 and "master key 'k1' is wrong" in err, err
    assert wrong not in err and K1 not in err

    code, err = await _serve(own_db, port, RPA_CREDENTIALS_MASTER_KEYS=f"k2:{K2}")
    assert code == 2 and "wrapped by master key(s) 'k1'" in err, err

    code, err = await _serve(
        own_db,
        port,
        RPA_ENVIRONMENT="production",
        RPA_SECRET_KEY="p" * 40,
        RPA_ENCRYPTION_KEYS=f"e:{K2}",
    )
    assert code == 2 and "production needs RPA_CREDENTIALS_MASTER_KEYS" in err, err

    # The right key, from a file, with a new first key: the service serves, and both keys now have
    # their key-check record.
    path = tmp_path / "master-keys"
    path.write_text(f"k2:{K2}\nk1:{K1}\n")
    code, err = await _serve(own_db, port, RPA_CREDENTIALS_MASTER_KEYS_FILE=str(path))
    assert code is None, err
    engine = create_engine(settings_with(own_db), "tests", pool_size=1)
    try:
        checks = await run_in_transaction(
            session_factory(engine), lambda s: s.execute(sa.select(MasterKeyCheck.key_id))
        )
        assert {r[0] for r in checks} >= {"k1", "k2"}
    finally:
        await engine.dispose()
    # A wrong k2 is now caught by its key-check record, though no data key uses k2 yet.
    code, err = await _serve(own_db, port, RPA_CREDENTIALS_MASTER_KEYS=f"k2:{wrong},k1:{K1}")
    assert code == 2 and "master key 'k2' is wrong" in err, err
