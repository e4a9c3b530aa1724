"""What the isolation and permission walks share: one object of every kind in an account, and a way
to run the examples of ``tests/api/audit_examples.py`` with another caller's token.

Two walks use this (``test_isolation_walk.py``, ``test_permission_walk.py``). Both walk the live
OpenAPI document:

- A write operation (POST/PUT/PATCH/DELETE) is run through its example in ``audit_examples.py``: the
  example sets up its objects as the tenant's admin, then ``Probe.op`` makes the call under test
  with the probing token instead, records the answer and stops the example. Adding an example
  there (which the audit test demands anyway) is all a new write operation needs.
- A read operation (GET) takes its path parameters from ``Objects.params``: one object of every
  kind, by path parameter name. A new read whose path has a parameter not known here fails the walk
  (add its object in ``build_objects`` and its name in ``Objects.params``).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import sqlalchemy as sa

from rpa_common.blobs import shared_blob_store
from rpa_common.db.uow import run_in_transaction
from rpa_common.models import AuditChain, Screenshot
from rpa_common.models.base import utcnow
from rpa_common.models.enums import RobotRole
from tests.api import audit_examples as ex
from tests.conftest import Tenant

API = "/api/v1"
MUTATING = ("post", "put", "patch", "delete")
_PARAM = re.compile(r"\{([a-z_]+)\}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def operations(doc: dict[str, Any], methods: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    """operation id -> (method, path) of the API's operations (under /api/v1) with these methods."""
    return {
        op["operationId"]: (method, path)
        for path, item in doc["paths"].items()
        if path.startswith(API)
        for method, op in item.items()
        if method in methods
    }


def path_params(path: str) -> list[str]:
    return _PARAM.findall(path)


def uuids_in(value: Any) -> set[str]:
    return set(_UUID.findall(json.dumps(value, default=str)))


async def chain_seq(tenant: Tenant) -> int:
    """The account's audit chain head: every write writes a record, so an unchanged head means
    nothing was written."""
    async with tenant.ctx.sessions() as session:
        seq = await session.scalar(
            sa.select(AuditChain.seq).where(AuditChain.account_id == tenant.account_id)
        )
        return int(seq or 0)


class Probed(Exception):
    """Stops an example once its call under test has been made."""


@dataclass
class Probe(ex.World):
    """A ``World`` whose call under test is made with ``probe_headers`` (another caller), not
    asserted, and ends the example. ``explicit`` is set when the example brings its own credentials
    (a login, a webhook signature...): such operations must be listed as exceptions by the walk."""

    probe_headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    body_ids: set[str] = field(default_factory=set)
    explicit: bool = False
    before: Any = None

    async def op(self, headers: dict[str, str] | None = None, **kw: Any) -> Any:
        names = path_params(self.path)
        self.params = {n: str(kw.pop(n)) for n in names}
        url = self.path.format(**self.params)
        self.body_ids = uuids_in({k: v for k, v in kw.items() if k in ("json", "data")})
        self.explicit = headers is not None
        self.before = await snapshot(self)
        self.response = await self.client.request(
            self.method.upper(), url, headers={**self.probe_headers, "User-Agent": ex.USER_AGENT}, **kw
        )
        raise Probed


_GET_PATHS: list[str] = []


async def snapshot(w: Probe) -> Any:
    """What the tenant's admin reads of the object the call names: the GET of the longest path that
    the call's path starts with (``/robots/{robot_id}`` for ``/robots/{robot_id}/rotate-key``), and the
    account's audit chain head."""
    best = None
    for get_path in _GET_PATHS:
        names = path_params(get_path)
        fits = w.path.startswith(get_path) and names and set(names) <= set(w.params)
        if fits and (best is None or len(get_path) > len(best)):
            best = get_path
    seq = await chain_seq(w.tenant)
    if best is None:
        return (seq, None)
    resp = await w.client.get(best.format(**w.params), headers=w.tenant.headers)
    return (seq, resp.status_code, resp.content)


def known_gets(doc: dict[str, Any]) -> None:
    _GET_PATHS[:] = [p for p, item in doc["paths"].items() if "get" in item]


async def run_example(
    client: httpx.AsyncClient, tenant: Tenant, op_id: str, method: str, path: str, headers: dict[str, str]
) -> Probe:
    """Run ``op_id``'s example with its call under test made with ``headers``."""
    w = Probe(client, tenant, method, path, probe_headers=headers)
    try:
        await ex.EXAMPLES[op_id](w)
    except Probed:
        return w
    raise AssertionError(f"{op_id}: its example never made its call")


@dataclass
class Objects:
    """One object of every kind in one account, by path parameter name."""

    ids: dict[str, str]

    def params(self, path: str) -> dict[str, str] | None:
        """The path's parameters, or None when a name is unknown."""
        out = {}
        for name in path_params(path):
            key = name
            if name == "group_id" and path.startswith(f"{API}/resource-groups"):
                key = "resource_group_id"
            if name == "account_id" and "terminal-servers" in path:
                key = "unattended_account_id"
            if key not in self.ids:
                return None
            out[name] = self.ids[key]
        return out


async def build_objects(client: httpx.AsyncClient, tenant: Tenant) -> Objects:
    w = ex.World(client, tenant, "get", "")
    ids: dict[str, str] = {}
    user_id, _, _ = await tenant.user("Viewer")
    ids["user_id"] = str(user_id)
    ids["key_id"] = (await w.setup("POST", "/api-keys", json={"name": ex._n("key")}))["id"]
    role = await w.setup(
        "POST",
        "/roles",
        json={"name": ex._n("role"), "permissions": [{"object": "robots", "action": "read"}]},
    )
    ids["role_id"] = role["id"]
    ids["folder_id"] = (await w.setup("POST", "/folders", json={"name": ex._n("f")}))["id"]
    robot = await ex._robot(w, RobotRole.UNATTENDED)
    ids["robot_id"] = str(robot)
    group = await w.setup("POST", "/robot-groups", json={"name": ex._n("rg")})
    ids["group_id"] = group["id"]
    server = await ex._server(w)
    ids["server_id"] = server["id"]
    ua = await w.setup("POST", f"/terminal-servers/{server['id']}/accounts", json={"login": ex._n("svc")})
    ids["unattended_account_id"] = ua["id"]
    version = await ex._published(w)
    ids["process_id"], ids["version_id"] = version["process_id"], version["id"]
    job = await w.setup("POST", "/jobs", json={"process_id": version["process_id"], "robot_id": str(robot)})
    ids["job_id"] = job["id"]
    queue, task = await ex._task(w)
    ids["queue_id"], ids["task_id"] = queue["id"], task["id"]
    res, value = await ex._credential(w)
    ids["resource_id"], ids["value_id"] = res["id"], value["id"]
    ids["resource_group_id"] = res["group_id"]
    ids["calendar_id"] = (await w.setup("POST", "/calendars", json={"name": ex._n("cal")}))["id"]
    trigger = await w.setup(
        "POST",
        "/triggers",
        json={
            "name": ex._n("trg"),
            "kind": "schedule",
            "cron": "0 9 * * 1-5",
            "process_id": version["process_id"],
            "robot_id": str(robot),
        },
    )
    ids["trigger_id"] = trigger["id"]
    ids["screenshot_id"] = str(await _screenshot(tenant, job["id"], str(robot)))
    ids["license_id"] = (await w.setup("POST", "/licenses", json={"key": ex.issue_key()}))["id"]
    app = await w.setup("POST", "/external-apps", json={"name": ex._n("app"), "scopes": ["processes:read"]})
    ids["app_id"] = app["id"]
    hook = await w.setup("POST", "/webhooks", json={"url": ex._HOOK_URL, "event_types": ["job.state"]})
    ids["subscription_id"] = hook["id"]
    idp = await w.setup("POST", "/identity-providers", json=ex._ldap_body("ldap://127.0.0.1:1"))
    ids["provider_id"] = idp["id"]
    return Objects(ids)


_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


async def _screenshot(tenant: Tenant, job_id: str, robot_id: str) -> uuid.UUID:
    shot_id = uuid.uuid4()
    key = f"screenshots/{tenant.account_id}/{shot_id}.png"
    await shared_blob_store(tenant.ctx.settings).put(key, _PNG, "image/png")

    async def work(session: Any) -> None:
        session.add(
            Screenshot(
                id=shot_id,
                account_id=tenant.account_id,
                robot_id=uuid.UUID(robot_id),
                job_id=uuid.UUID(job_id),
                content_type="image/png",
                size=len(_PNG),
                width=1,
                height=1,
                blob_key=key,
                at=utcnow() - timedelta(seconds=5),
            )
        )

    await run_in_transaction(tenant.ctx.sessions, work)
    return shot_id


STREAMS = {
    "jobs_stream_logs": "a server-sent event stream that stays open while the job runs (test_job_logs)",
    "events_stream": "the account's server-sent event stream never ends (tests/events/test_stream.py)",
}
"""Reads whose 200 answer never ends: only their refusals are walked."""

BROWSER_STEPS = {
    "auth_oidc_login": "a browser's step of an OpenID login (a redirect to the provider, no token): tests/sso",
    "auth_oidc_callback": "the OpenID provider's redirect back (state cookie, no token): tests/sso",
}
"""Reads that are steps of a browser's login, not reads of an object: walked in tests/sso/test_oidc.py."""


def query_for(path: str) -> dict[str, str]:
    """The required query parameters of the reads that have some: statistics span the last day."""
    if not path.startswith(f"{API}/statistics/"):
        return {}
    now = utcnow()
    return {"from": (now - timedelta(days=1)).isoformat(), "to": (now + timedelta(hours=1)).isoformat()}
