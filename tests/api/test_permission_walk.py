"""The built-in read-only role, walked over every operation of the live OpenAPI document.

A user whose only role is Viewer (``rpa_api/roles/builtin.py``):

- reads every operational object: every read (GET) answers 200, but those of administration
  (users, roles, API keys, the account, the audit trail), which answer 403;
- changes nothing: every write (POST/PUT/PATCH/DELETE) answers 403 problem+json, and the object the
  call names (as the admin reads it) and the account's audit chain are unchanged.

The exceptions are listed below with their reason. How to add an operation: a write needs its
example in ``tests/api/audit_examples.py`` (the audit test demands one anyway) and nothing else. A
read whose path has a parameter this walk does not know fails: give its object in
``tests/api/walks.py`` (``build_objects``, ``Objects.params``). A write a Viewer may make goes in
``VIEWER_MAY_WRITE``, a read it may not make in ``VIEWER_MAY_NOT_READ``, each with the reason.
"""

from __future__ import annotations

import httpx

from tests.api import audit_examples as ex
from tests.api import walks
from tests.conftest import Tenant

VIEWER_MAY_WRITE: dict[str, str] = {
    "auth_token": "logging in needs no permission",
    "auth_refresh": "renewing one's own session needs no permission",
    "auth_revoke": "ending one's own session needs no permission",
    "auth_logout_all": "ending all of one's own sessions needs no permission",
    "accounts_create": "made by the installation admin (its example brings that token)",
    "triggers_call_webhook": "authenticated by the trigger's secret, not by a user",
    "auth_ldap_token": "logging in through a directory needs no permission",
    "auth_oidc_token": "ending an OpenID login needs no permission",
    "events_create_ticket": "a ticket to follow the events the caller may already read",
}

_ADMIN = "administration: the Viewer reads operational objects only (READ_ALL_OPERATIONAL, roles/builtin.py)"
VIEWER_MAY_NOT_READ: dict[str, str] = {
    "accounts_get_current": _ADMIN,
    "api_keys_list": _ADMIN,
    "audit_list": _ADMIN,
    "audit_verify": _ADMIN,
    "roles_catalogue": _ADMIN,
    "roles_get": _ADMIN,
    "roles_list": _ADMIN,
    "users_get": _ADMIN,
    "users_list": _ADMIN,
    "external_apps_get": _ADMIN,
    "external_apps_list": _ADMIN,
    "identity_providers_get": _ADMIN,
    "identity_providers_list": _ADMIN,
    "webhooks_get": "a receiver's URL often carries its own token: Developer and Administrator only",
    "webhooks_list": "a receiver's URL often carries its own token: Developer and Administrator only",
    "webhooks_list_deliveries": "a receiver's URL often carries its own token: Developer and Administrator only",
}


async def test_viewer_reads_everything_and_changes_nothing(client: httpx.AsyncClient, tenant: Tenant) -> None:
    doc = (await client.get("/openapi.json")).json()
    walks.known_gets(doc)
    _, _, viewer = await tenant.user("Viewer")
    objects = await walks.build_objects(client, tenant)
    failures: list[str] = []

    reads = walks.operations(doc, ("get",))
    for op_id, (_, path) in sorted(reads.items()):
        if op_id in walks.BROWSER_STEPS:
            continue
        params = objects.params(path)
        if params is None:
            failures.append(f"{op_id}: no object for a parameter of {path} (see tests/api/walks.py)")
            continue
        if op_id in walks.STREAMS:
            continue
        resp = await client.get(path.format(**params), params=walks.query_for(path), headers=viewer)
        want = 403 if op_id in VIEWER_MAY_NOT_READ else 200
        if resp.status_code != want:
            failures.append(f"{op_id}: the Viewer's read answers {resp.status_code}: {resp.text[:200]}")

    writes = walks.operations(doc, walks.MUTATING)
    missing = sorted(set(writes) - set(ex.EXAMPLES) - set(VIEWER_MAY_WRITE))
    assert not missing, f"writes without an example in tests/api/audit_examples.py: {missing}"
    stale = sorted((set(VIEWER_MAY_WRITE) - set(writes)) | (set(VIEWER_MAY_NOT_READ) - set(reads)))
    assert not stale, f"exceptions naming unknown operations: {stale}"
    for op_id, (method, path) in sorted(writes.items()):
        if op_id in VIEWER_MAY_WRITE:
            continue
        w = await walks.run_example(client, tenant, op_id, method, path, viewer)
        resp = w.response
        assert resp is not None
        if w.explicit:
            failures.append(f"{op_id}: its example brings its own credentials: list it in VIEWER_MAY_WRITE")
            continue
        if resp.status_code != 403 or not resp.headers["content-type"].startswith("application/problem+json"):
            failures.append(f"{op_id}: the Viewer's write answers {resp.status_code}: {resp.text[:200]}")
        if await walks.snapshot(w) != w.before:
            failures.append(f"{op_id}: the Viewer's call changed the object or wrote to the audit chain")
    assert not failures, "\n".join(failures)
