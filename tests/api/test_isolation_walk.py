"""Tenant isolation, walked over every operation of the live OpenAPI document.

Account A owns one object of every kind; account B's admin (every permission, in its own account)
calls every operation on A's objects:

- a read (GET) of one of A's objects answers 404; a read without an object id (a listing, the
  caller's own account...) answers without any of A's object ids;
- a write (POST/PUT/PATCH/DELETE) naming one of A's objects in its path answers 404; a write with
  no id in its path that names one of A's objects in its body answers 404 or 422; and in every
  case A's object (as A's admin reads it) and A's audit chain are unchanged.

How to add an operation: a write needs its example in ``tests/api/audit_examples.py`` (the audit
test demands one anyway) and nothing else. A read whose path has a parameter this walk does not
know fails: give its object in ``tests/api/walks.py`` (``build_objects``, ``Objects.params``).
An operation that cannot be walked this way goes in ``NOT_WALKED`` with the reason.
"""

from __future__ import annotations

import httpx

from tests.api import audit_examples as ex
from tests.api import walks
from tests.conftest import Tenant

NOT_WALKED: dict[str, str] = {
    # Examples that bring their own credentials: their caller is not B's admin.
    "auth_token": "a login with a username and password: no object of A",
    "auth_refresh": "presents a refresh token (A's token is A's proof, B has none)",
    "auth_revoke": "presents a refresh token (test_auth covers revoking another's token)",
    "auth_logout_all": "acts on the caller's own sessions only",
    "accounts_create": "the installation admin creates accounts; no object of A",
    "triggers_call_webhook": "authenticated by the trigger's secret, not a token (test_triggers)",
    "auth_ldap_token": "a login with a directory's username and password (tests/sso): no object of A",
    "auth_oidc_token": "presents the one-time code of an OpenID login (tests/sso): no object of A",
}


async def test_account_b_cannot_reach_account_a(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    doc = (await client.get("/openapi.json")).json()
    walks.known_gets(doc)
    a, b = tenant, other_tenant
    objects = await walks.build_objects(client, a)
    a_ids = set(objects.ids.values())
    failures: list[str] = []

    # Reads.
    for op_id, (_, path) in sorted(walks.operations(doc, ("get",)).items()):
        if op_id in walks.BROWSER_STEPS:
            continue
        params = objects.params(path)
        if params is None:
            failures.append(f"{op_id}: no object for a parameter of {path} (see tests/api/walks.py)")
            continue
        if op_id in walks.STREAMS and not params:
            continue  # B's own stream never ends; its scoping is tested in tests/events/test_stream.py
        url = path.format(**params)
        query = walks.query_for(path)
        mine = None if op_id in walks.STREAMS else await client.get(url, params=query, headers=a.headers)
        if mine is not None and mine.status_code != 200:
            failures.append(f"{op_id}: A's own read answers {mine.status_code}: {mine.text[:200]}")
            continue
        theirs = await client.get(url, params=query, headers=b.headers)
        if params:
            if theirs.status_code != 404:
                failures.append(f"{op_id}: B reads A's object with {theirs.status_code}")
        elif theirs.status_code != 200 or (leak := walks.uuids_in(theirs.text) & a_ids):
            failures.append(f"{op_id}: B's answer {theirs.status_code} names A's objects: {leak}")

    # Writes.
    writes = walks.operations(doc, walks.MUTATING)
    missing = sorted(set(writes) - set(ex.EXAMPLES) - set(NOT_WALKED))
    assert not missing, f"writes without an example in tests/api/audit_examples.py: {missing}"
    assert not (stale := sorted(set(NOT_WALKED) - set(writes))), (
        f"NOT_WALKED names unknown operations: {stale}"
    )
    for op_id, (method, path) in sorted(writes.items()):
        if op_id in NOT_WALKED:
            continue
        w = await walks.run_example(client, a, op_id, method, path, b.headers)
        resp = w.response
        assert resp is not None
        if w.explicit:
            failures.append(f"{op_id}: its example brings its own credentials: list it in NOT_WALKED")
            continue
        if w.params:
            if resp.status_code != 404:
                failures.append(
                    f"{op_id}: B's call on A's object answers {resp.status_code}: {resp.text[:200]}"
                )
        elif w.body_ids and resp.status_code not in (404, 422):
            failures.append(
                f"{op_id}: B's call naming A's objects answers {resp.status_code}: {resp.text[:200]}"
            )
        if resp.status_code >= 400 and not resp.headers["content-type"].startswith(
            "application/problem+json"
        ):
            failures.append(f"{op_id}: a {resp.status_code} that is not problem+json")
        if await walks.snapshot(w) != w.before:
            failures.append(f"{op_id}: B's call changed A's object or audit chain")
    assert not failures, "\n".join(failures)
