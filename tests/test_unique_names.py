"""Unique names compare case-insensitively, the same way on PostgreSQL and MariaDB.

"Bots" and "bots" are one name (the API answers the second 409, naming the field); "Bots" and
"Böts", or "Bots" and "Bots " (padded), are two, on both databases: PostgreSQL through unique
indexes on ``lower(name)``, MariaDB through the names' collation (``rpa_common.models.base``).
"""

from __future__ import annotations

import uuid

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from rpa_common.db.uow import run_in_transaction
from rpa_common.models import Account
from rpa_common.models.base import NAME_COLLATION_MARIADB, UNIQUE_NAMES
from rpa_common.service import ServiceContext
from tests.conftest import Tenant

API = "/api/v1"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/robots", {"role": "attended"}),
        ("/robot-groups", {}),
        ("/terminal-servers", {}),
        ("/folders", {}),
        ("/roles", {}),
    ],
)
async def test_a_name_that_differs_only_in_case_is_a_conflict(
    client: httpx.AsyncClient, tenant: Tenant, path: str, body: dict[str, object]
) -> None:
    base = f"Bots-{uuid.uuid4().hex[:6]}"
    first = await client.post(API + path, json={**body, "name": base}, headers=tenant.headers)
    assert first.status_code == 201, first.text
    again = await client.post(API + path, json={**body, "name": base.lower()}, headers=tenant.headers)
    assert again.status_code == 409, again.text
    assert again.headers["content-type"].startswith("application/problem+json")
    assert "name" in again.text
    upper = await client.post(API + path, json={**body, "name": base.upper()}, headers=tenant.headers)
    assert upper.status_code == 409, upper.text


async def _add_account(ctx: ServiceContext, name: str) -> None:
    async def work(session):  # type: ignore[no-untyped-def]
        session.add(Account(id=uuid.uuid4(), name=name))
        await session.flush()

    await run_in_transaction(ctx.sessions, work, attempts=1)


async def test_only_case_is_ignored_not_accents_nor_padding(ctx: ServiceContext) -> None:
    name = f"Bots-{uuid.uuid4().hex[:6]}"
    await _add_account(ctx, name)
    with pytest.raises(IntegrityError):
        await _add_account(ctx, name.swapcase())
    await _add_account(ctx, name.replace("o", "ö"))  # another letter, on both databases
    await _add_account(ctx, name + " ")  # padded: another name, on both databases


async def test_every_unique_name_is_case_insensitive_in_the_schema(ctx: ServiceContext) -> None:
    async with ctx.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            rows = await conn.execute(
                sa.text("SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = 'public'")
            )
            indexes = [(r.tablename, r.indexdef) for r in rows]
            for table, scope, column, _, _ in UNIQUE_NAMES:
                wanted = f"lower(({column})::text)"
                found = [d for t, d in indexes if t == table and "UNIQUE" in d and wanted in d]
                assert found, f"{table}.{column}: no unique index on lower({column})"
                assert all(s in found[0] for s in scope)
        else:
            rows = await conn.execute(
                sa.text(
                    "SELECT TABLE_NAME, COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS "
                    "WHERE TABLE_SCHEMA = DATABASE()"
                )
            )
            collations = {(r[0], r[1]): r[2] for r in rows}
            for table, _, column, _, _ in UNIQUE_NAMES:
                assert collations[(table, column)] == NAME_COLLATION_MARIADB, (table, column)
