"""One valid call per mutating operation of the API, and the audit record it must write.

``tests/api/test_audit.py`` walks the live app's OpenAPI document: every POST, PUT, PATCH and DELETE
operation must have an entry here (keyed by its operation id), or the test fails, so a new endpoint
that forgets its audit record cannot go unnoticed.

To add an operation: write an ``async def`` taking a ``World``, decorate it with
``@example("operation_id")``; set up what it needs with ``w.setup(...)`` (or the factories), make
the call with ``w.op(...)`` (method and path come from the document; give the path parameters,
the body, the headers) and return ``Expect(action, object_type, object_id)``: the record that call
must have written in the tenant's account (``account_id=`` for another account).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import sqlalchemy as sa

from rpa_common.models import Account, AuditChain
from rpa_common.models.enums import RobotRole
from tests.api.factories import make_process, make_robot
from tests.api.helpers import make_package
from tests.conftest import PASSWORD, Tenant
from tests.license_keys import issue_key

API = "/api/v1"
USER_AGENT = "audit-walker/1.0"
SECRET = f"Walker-S3cret-{uuid.uuid4().hex}"
"""Every password and secret the examples send: it must never appear in an audit record."""


@dataclass
class Expect:
    action: str
    object_type: str
    object_id: Any
    """The object's id (str or UUID); None when the record names none."""
    account_id: uuid.UUID | None = None
    """The account the record belongs to; the tenant's when None."""


@dataclass
class World:
    """What an example works with: the API client, the tenant, and the operation under test."""

    client: httpx.AsyncClient
    tenant: Tenant
    method: str
    path: str
    marks: dict[uuid.UUID, int] = field(default_factory=dict)
    response: httpx.Response | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {**self.tenant.headers, "User-Agent": USER_AGENT}

    async def setup(self, method: str, path: str, **kw: Any) -> Any:
        """A call that prepares the example (its audit records are not the ones checked)."""
        kw.setdefault("headers", self.headers)
        resp = await self.client.request(method, f"{API}{path}", **kw)
        assert resp.status_code < 300, f"setup {method} {path}: {resp.status_code} {resp.text}"
        return resp.json() if resp.content else None

    async def op(self, headers: dict[str, str] | None = None, **kw: Any) -> Any:
        """The call of the operation under test: its method and path from the document, the path's
        parameters from ``kw`` (by name), the rest to httpx. Asserts a 2xx answer."""
        names = [p[1:-1] for p in _PARAM.findall(self.path)]
        params = {n: kw.pop(n) for n in names}
        url = self.path.format(**{n: str(v) for n, v in params.items()})
        # Records written from here on are the ones the check reads.
        self.marks = await chain_heads(self.tenant)
        resp = await self.client.request(
            self.method.upper(),
            url,
            headers={**(self.headers if headers is None else headers), "User-Agent": USER_AGENT},
            **kw,
        )
        self.response = resp
        assert resp.status_code < 300, f"{self.method.upper()} {url}: {resp.status_code} {resp.text}"
        return resp.json() if resp.content else None


Example = Callable[[World], Awaitable[Expect]]
EXAMPLES: dict[str, Example] = {}


def example(operation_id: str) -> Callable[[Example], Example]:
    def register(fn: Example) -> Example:
        assert operation_id not in EXAMPLES, f"two examples for {operation_id}"
        EXAMPLES[operation_id] = fn
        return fn

    return register


_PARAM = __import__("re").compile(r"\{[a-z_]+\}")


async def chain_heads(tenant: Tenant) -> dict[uuid.UUID, int]:
    async with tenant.ctx.sessions() as session:
        rows = await session.execute(sa.select(AuditChain.account_id, AuditChain.seq))
        return {r.account_id: int(r.seq) for r in rows}


# Small builders -------------------------------------------------------------------------------


def _n(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def _login(w: World) -> dict[str, Any]:
    resp = await w.client.post(
        f"{API}/auth/token", data={"username": w.tenant.admin_username, "password": PASSWORD}
    )
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def _robot(w: World, role: RobotRole = RobotRole.ATTENDED) -> uuid.UUID:
    return (await make_robot(w.tenant.ctx, w.tenant.account_id, role=role)).id


async def _queue(w: World) -> dict[str, Any]:
    return await w.setup("POST", "/queues", json={"name": _n("q")})  # type: ignore[no-any-return]


async def _task(w: World) -> tuple[dict[str, Any], dict[str, Any]]:
    queue = await _queue(w)
    task = await w.setup("POST", f"/queues/{queue['id']}/tasks", json={"name": _n("t")})
    return queue, task


async def _resource(w: World, kind: str = "text") -> dict[str, Any]:
    group = await w.setup("POST", "/resource-groups", json={"name": _n("g")})
    return await w.setup(  # type: ignore[no-any-return]
        "POST", "/resources", json={"group_id": group["id"], "name": _n("r"), "kind": kind}
    )


async def _job(w: World) -> dict[str, Any]:
    process, _ = await make_process(w.tenant.ctx, w.tenant.account_id)
    robot = await _robot(w)
    return await w.setup(  # type: ignore[no-any-return]
        "POST", "/jobs", json={"process_id": str(process.id), "robot_id": str(robot)}
    )


async def _server(w: World) -> dict[str, Any]:
    return await w.setup("POST", "/terminal-servers", json={"name": _n("ts")})  # type: ignore[no-any-return]


# Auth and accounts ------------------------------------------------------------------------------


@example("auth_token")
async def _auth_token(w: World) -> Expect:
    await w.op(headers={}, data={"username": w.tenant.admin_username, "password": PASSWORD})
    return Expect("login", "user", w.tenant.admin_id)


@example("auth_refresh")
async def _auth_refresh(w: World) -> Expect:
    tokens = await _login(w)
    await w.op(headers={}, json={"refresh_token": tokens["refresh_token"]})
    return Expect("refresh", "user", w.tenant.admin_id)


@example("auth_revoke")
async def _auth_revoke(w: World) -> Expect:
    tokens = await _login(w)
    await w.op(headers={}, json={"refresh_token": tokens["refresh_token"]})
    return Expect("revoke_refresh_token", "user", w.tenant.admin_id)


@example("auth_logout_all")
async def _auth_logout_all(w: World) -> Expect:
    user_id, _, headers = await w.tenant.user("Viewer")
    await w.op(headers=headers)
    return Expect("logout_all", "user", user_id)


@example("events_create_ticket")
async def _events_create_ticket(w: World) -> Expect:
    await w.op()
    return Expect("create_event_ticket", "user", w.tenant.admin_id)


@example("api_keys_create")
async def _api_keys_create(w: World) -> Expect:
    key = await w.op(json={"name": _n("key")})
    return Expect("create", "api_key", key["id"])


@example("api_keys_revoke")
async def _api_keys_revoke(w: World) -> Expect:
    key = await w.setup("POST", "/api-keys", json={"name": _n("key")})
    await w.op(key_id=key["id"])
    return Expect("revoke", "api_key", key["id"])


@example("external_apps_create")
async def _external_apps_create(w: World) -> Expect:
    app = await w.op(json={"name": _n("app"), "scopes": ["processes:read"]})
    return Expect("create", "external_app", app["id"])


@example("external_apps_update")
async def _external_apps_update(w: World) -> Expect:
    app = await w.setup("POST", "/external-apps", json={"name": _n("app"), "scopes": ["processes:read"]})
    await w.op(app_id=app["id"], json={"is_active": False})
    return Expect("update", "external_app", app["id"])


@example("external_apps_rotate_secret")
async def _external_apps_rotate_secret(w: World) -> Expect:
    app = await w.setup("POST", "/external-apps", json={"name": _n("app"), "scopes": ["processes:read"]})
    await w.op(app_id=app["id"])
    return Expect("rotate_secret", "external_app", app["id"])


@example("external_apps_delete")
async def _external_apps_delete(w: World) -> Expect:
    app = await w.setup("POST", "/external-apps", json={"name": _n("app"), "scopes": ["processes:read"]})
    await w.op(app_id=app["id"])
    return Expect("delete", "external_app", app["id"])


@example("accounts_update_current")
async def _accounts_update_current(w: World) -> Expect:
    await w.op(json={"description": "audited"})
    return Expect("update", "account", w.tenant.account_id)


@example("accounts_create")
async def _accounts_create(w: World) -> Expect:
    from tests.api.test_accounts import installation_admin

    root = await installation_admin(w.tenant)
    body = {"name": _n("acc"), "admin": {"username": _n("first"), "password": SECRET}}
    created = await w.op(headers=root, json=body)
    async with w.tenant.ctx.sessions() as session:
        default = (await session.execute(sa.select(Account.id).where(Account.name == "default"))).scalar_one()
    return Expect("create", "account", created["id"], account_id=default)


# Users, roles, folders ---------------------------------------------------------------------------


@example("users_create")
async def _users_create(w: World) -> Expect:
    user = await w.op(json={"username": _n("u"), "password": SECRET})
    return Expect("create", "user", user["id"])


@example("users_update")
async def _users_update(w: World) -> Expect:
    user_id, _, _ = await w.tenant.user("Viewer")
    await w.op(user_id=user_id, json={"display_name": "Audited"})
    return Expect("update", "user", user_id)


@example("users_delete")
async def _users_delete(w: World) -> Expect:
    user_id, _, _ = await w.tenant.user("Viewer")
    await w.op(user_id=user_id)
    return Expect("delete", "user", user_id)


@example("users_set_roles")
async def _users_set_roles(w: World) -> Expect:
    user_id, _, _ = await w.tenant.user("Viewer")
    roles = await w.setup("GET", "/roles")
    operator = next(r["id"] for r in roles["items"] if r["name"] == "Operator")
    await w.op(user_id=user_id, json={"role_ids": [operator]})
    return Expect("update", "user", user_id)


@example("users_reset_password")
async def _users_reset_password(w: World) -> Expect:
    user_id, _, _ = await w.tenant.user("Viewer")
    await w.op(user_id=user_id, json={"password": SECRET})
    return Expect("reset_password", "user", user_id)


@example("roles_create")
async def _roles_create(w: World) -> Expect:
    role = await w.op(json={"name": _n("role"), "permissions": [{"object": "robots", "action": "read"}]})
    return Expect("create", "role", role["id"])


@example("roles_update")
async def _roles_update(w: World) -> Expect:
    role = await w.setup("POST", "/roles", json={"name": _n("role"), "permissions": []})
    await w.op(role_id=role["id"], json={"description": "audited"})
    return Expect("update", "role", role["id"])


@example("roles_delete")
async def _roles_delete(w: World) -> Expect:
    role = await w.setup("POST", "/roles", json={"name": _n("role"), "permissions": []})
    await w.op(role_id=role["id"])
    return Expect("delete", "role", role["id"])


@example("folders_create")
async def _folders_create(w: World) -> Expect:
    folder = await w.op(json={"name": _n("f")})
    return Expect("create", "folder", folder["id"])


@example("folders_update")
async def _folders_update(w: World) -> Expect:
    folder = await w.setup("POST", "/folders", json={"name": _n("f")})
    await w.op(folder_id=folder["id"], json={"description": "audited"})
    return Expect("update", "folder", folder["id"])


@example("folders_delete")
async def _folders_delete(w: World) -> Expect:
    folder = await w.setup("POST", "/folders", json={"name": _n("f")})
    await w.op(folder_id=folder["id"])
    return Expect("delete", "folder", folder["id"])


# Robots, groups, terminal servers ----------------------------------------------------------------


@example("robots_create")
async def _robots_create(w: World) -> Expect:
    robot = await w.op(json={"name": _n("robot")})
    return Expect("create", "robot", robot["id"])


@example("robots_update")
async def _robots_update(w: World) -> Expect:
    robot = await _robot(w)
    await w.op(robot_id=robot, json={"description": "audited"})
    return Expect("update", "robot", robot)


@example("robots_delete")
async def _robots_delete(w: World) -> Expect:
    robot = await _robot(w)
    await w.op(robot_id=robot)
    return Expect("delete", "robot", robot)


@example("robots_rotate_key")
async def _robots_rotate_key(w: World) -> Expect:
    robot = await _robot(w)
    await w.op(robot_id=robot)
    return Expect("rotate_key", "robot", robot)


@example("licenses_install")
async def _licenses_install(w: World) -> Expect:
    lic = await w.op(json={"key": issue_key()})
    return Expect("install", "license", lic["id"])


@example("licenses_delete")
async def _licenses_delete(w: World) -> Expect:
    lic = await w.setup("POST", "/licenses", json={"key": issue_key()})
    await w.op(license_id=lic["id"])
    return Expect("delete", "license", lic["id"])


@example("robot_groups_create")
async def _robot_groups_create(w: World) -> Expect:
    group = await w.op(json={"name": _n("group")})
    return Expect("create", "robot_group", group["id"])


@example("robot_groups_update")
async def _robot_groups_update(w: World) -> Expect:
    group = await w.setup("POST", "/robot-groups", json={"name": _n("group")})
    await w.op(group_id=group["id"], json={"description": "audited"})
    return Expect("update", "robot_group", group["id"])


@example("robot_groups_delete")
async def _robot_groups_delete(w: World) -> Expect:
    group = await w.setup("POST", "/robot-groups", json={"name": _n("group")})
    await w.op(group_id=group["id"])
    return Expect("delete", "robot_group", group["id"])


@example("robot_groups_replace_members")
async def _robot_groups_replace_members(w: World) -> Expect:
    group = await w.setup("POST", "/robot-groups", json={"name": _n("group")})
    robot = await _robot(w)
    await w.op(group_id=group["id"], json={"robot_ids": [str(robot)]})
    return Expect("update_members", "robot_group", group["id"])


@example("robot_groups_add_member")
async def _robot_groups_add_member(w: World) -> Expect:
    group = await w.setup("POST", "/robot-groups", json={"name": _n("group")})
    robot = await _robot(w)
    await w.op(group_id=group["id"], robot_id=robot)
    return Expect("add_member", "robot_group", group["id"])


@example("robot_groups_remove_member")
async def _robot_groups_remove_member(w: World) -> Expect:
    robot = await _robot(w)
    group = await w.setup("POST", "/robot-groups", json={"name": _n("group"), "robot_ids": [str(robot)]})
    await w.op(group_id=group["id"], robot_id=robot)
    return Expect("remove_member", "robot_group", group["id"])


@example("terminal_servers_create")
async def _terminal_servers_create(w: World) -> Expect:
    server = await w.op(json={"name": _n("ts")})
    return Expect("create", "terminal_server", server["id"])


@example("terminal_servers_update")
async def _terminal_servers_update(w: World) -> Expect:
    server = await _server(w)
    await w.op(server_id=server["id"], json={"description": "audited"})
    return Expect("update", "terminal_server", server["id"])


@example("terminal_servers_delete")
async def _terminal_servers_delete(w: World) -> Expect:
    server = await _server(w)
    await w.op(server_id=server["id"])
    return Expect("delete", "terminal_server", server["id"])


@example("terminal_servers_create_account")
async def _terminal_servers_create_account(w: World) -> Expect:
    server = await _server(w)
    ua = await w.op(server_id=server["id"], json={"login": _n("svc"), "password": SECRET})
    return Expect("create", "unattended_account", ua["id"])


@example("terminal_servers_update_account")
async def _terminal_servers_update_account(w: World) -> Expect:
    server = await _server(w)
    ua = await w.setup("POST", f"/terminal-servers/{server['id']}/accounts", json={"login": _n("svc")})
    await w.op(server_id=server["id"], account_id=ua["id"], json={"password": SECRET})
    return Expect("update", "unattended_account", ua["id"])


@example("terminal_servers_delete_account")
async def _terminal_servers_delete_account(w: World) -> Expect:
    server = await _server(w)
    ua = await w.setup("POST", f"/terminal-servers/{server['id']}/accounts", json={"login": _n("svc")})
    await w.op(server_id=server["id"], account_id=ua["id"])
    return Expect("delete", "unattended_account", ua["id"])


# Processes and jobs ---------------------------------------------------------------------------


def _package_files(name: str, version: str) -> dict[str, Any]:
    return {"package": ("package.zip", make_package(name, version), "application/zip")}


@example("processes_publish")
async def _processes_publish(w: World) -> Expect:
    done = await w.op(files=_package_files(_n("proc"), "1.0.0"))
    return Expect("publish", "process_version", done["version"]["id"])


async def _published(w: World) -> dict[str, Any]:
    """The first version of a new process (``VersionOut``, with the process's ``name``)."""
    done = await w.setup("POST", "/processes/publish", files=_package_files(_n("proc"), "1.0.0"))
    return {**done["version"], "name": done["process"]["name"]}


@example("processes_publish_version")
async def _processes_publish_version(w: World) -> Expect:
    first = await _published(w)
    version = await w.op(process_id=first["process_id"], files=_package_files(first["name"], "2.0.0"))
    return Expect("publish", "process_version", version["id"])


@example("processes_update")
async def _processes_update(w: World) -> Expect:
    first = await _published(w)
    await w.op(process_id=first["process_id"], json={"description": "audited"})
    return Expect("update", "process", first["process_id"])


@example("processes_delete")
async def _processes_delete(w: World) -> Expect:
    first = await _published(w)
    await w.op(process_id=first["process_id"])
    return Expect("delete", "process", first["process_id"])


@example("processes_delete_version")
async def _processes_delete_version(w: World) -> Expect:
    first = await _published(w)
    pid = first["process_id"]
    await w.setup("POST", f"/processes/{pid}/versions", files=_package_files(first["name"], "2.0.0"))
    await w.op(process_id=pid, version_id=first["id"])
    return Expect("delete", "process_version", first["id"])


@example("processes_make_current")
async def _processes_make_current(w: World) -> Expect:
    first = await _published(w)
    pid = first["process_id"]
    await w.setup("POST", f"/processes/{pid}/versions", files=_package_files(first["name"], "2.0.0"))
    await w.op(process_id=pid, version_id=first["id"])
    return Expect("make_current", "process", pid)


@example("jobs_create")
async def _jobs_create(w: World) -> Expect:
    process, _ = await make_process(w.tenant.ctx, w.tenant.account_id)
    robot = await _robot(w)
    job = await w.op(json={"process_id": str(process.id), "robot_id": str(robot)})
    return Expect("create", "job", job["id"])


@example("jobs_stop")
async def _jobs_stop(w: World) -> Expect:
    job = await _job(w)
    await w.op(job_id=job["id"], json={})
    return Expect("stop", "job", job["id"])


@example("jobs_interrupt")
async def _jobs_interrupt(w: World) -> Expect:
    job = await _job(w)
    await w.op(job_id=job["id"], json={})
    return Expect("interrupt", "job", job["id"])


# Queues and tasks ---------------------------------------------------------------------------------


@example("queues_create")
async def _queues_create(w: World) -> Expect:
    queue = await w.op(json={"name": _n("q")})
    return Expect("create", "queue", queue["id"])


@example("queues_update")
async def _queues_update(w: World) -> Expect:
    queue = await _queue(w)
    await w.op(queue_id=queue["id"], json={"description": "audited"})
    return Expect("update", "queue", queue["id"])


@example("queues_delete")
async def _queues_delete(w: World) -> Expect:
    queue = await _queue(w)
    await w.op(queue_id=queue["id"])
    return Expect("delete", "queue", queue["id"])


@example("tasks_add")
async def _tasks_add(w: World) -> Expect:
    queue = await _queue(w)
    await w.op(queue_id=queue["id"], json={"name": _n("t")})
    return Expect("add_tasks", "queue", queue["id"])


@example("tasks_add_bulk")
async def _tasks_add_bulk(w: World) -> Expect:
    queue = await _queue(w)
    await w.op(queue_id=queue["id"], json={"tasks": [{"name": _n("t")}, {"name": _n("t")}]})
    return Expect("add_tasks", "queue", queue["id"])


@example("tasks_upload_csv")
async def _tasks_upload_csv(w: World) -> Expect:
    queue = await _queue(w)
    data = f"name,amount\n{_n('t')},3\n".encode()
    await w.op(queue_id=queue["id"], files={"file": ("tasks.csv", data, "text/csv")})
    return Expect("add_tasks", "queue", queue["id"])


@example("tasks_update")
async def _tasks_update(w: World) -> Expect:
    queue, task = await _task(w)
    await w.op(queue_id=queue["id"], task_id=task["id"], json={"comment": "audited"})
    return Expect("update", "task", task["id"])


@example("tasks_delete")
async def _tasks_delete(w: World) -> Expect:
    queue, task = await _task(w)
    await w.op(queue_id=queue["id"], task_id=task["id"])
    return Expect("delete", "task", task["id"])


@example("tasks_retry")
async def _tasks_retry(w: World) -> Expect:
    queue, task = await _task(w)
    await w.setup(
        "PATCH",
        f"/queues/{queue['id']}/tasks/{task['id']}",
        json={"state": "Failed (Business)", "reason": "x"},
    )
    await w.op(queue_id=queue["id"], task_id=task["id"], json={"reason": "again"})
    return Expect("retry", "task", task["id"])


# Resources and calendars -------------------------------------------------------------------------


@example("resources_create_group")
async def _resources_create_group(w: World) -> Expect:
    group = await w.op(json={"name": _n("g")})
    return Expect("create", "resource_group", group["id"])


@example("resources_update_group")
async def _resources_update_group(w: World) -> Expect:
    group = await w.setup("POST", "/resource-groups", json={"name": _n("g")})
    await w.op(group_id=group["id"], json={"description": "audited"})
    return Expect("update", "resource_group", group["id"])


@example("resources_delete_group")
async def _resources_delete_group(w: World) -> Expect:
    group = await w.setup("POST", "/resource-groups", json={"name": _n("g")})
    await w.op(group_id=group["id"])
    return Expect("delete", "resource_group", group["id"])


@example("resources_create")
async def _resources_create(w: World) -> Expect:
    group = await w.setup("POST", "/resource-groups", json={"name": _n("g")})
    res = await w.op(json={"group_id": group["id"], "name": _n("r"), "kind": "text"})
    return Expect("create", "resource", res["id"])


@example("resources_update")
async def _resources_update(w: World) -> Expect:
    res = await _resource(w)
    await w.op(resource_id=res["id"], json={"description": "audited"})
    return Expect("update", "resource", res["id"])


@example("resources_delete")
async def _resources_delete(w: World) -> Expect:
    res = await _resource(w)
    await w.op(resource_id=res["id"])
    return Expect("delete", "resource", res["id"])


@example("resources_set_value")
async def _resources_set_value(w: World) -> Expect:
    res = await _resource(w, "credentials")
    await w.op(resource_id=res["id"], json={"scope": "all", "login": "svc", "password": SECRET})
    return Expect("create_value", "resource", res["id"])


async def _credential(w: World) -> tuple[dict[str, Any], dict[str, Any]]:
    res = await _resource(w, "credentials")
    value = await w.setup(
        "PUT", f"/resources/{res['id']}/values", json={"scope": "all", "login": "svc", "password": SECRET}
    )
    return res, value


@example("resources_delete_value")
async def _resources_delete_value(w: World) -> Expect:
    res, value = await _credential(w)
    await w.op(resource_id=res["id"], value_id=value["id"])
    return Expect("delete_value", "resource", res["id"])


@example("resources_reveal")
async def _resources_reveal(w: World) -> Expect:
    res, value = await _credential(w)
    shown = await w.op(resource_id=res["id"], value_id=value["id"])
    assert shown["password"] == SECRET
    return Expect("reveal", "resource", res["id"])


@example("calendars_create")
async def _calendars_create(w: World) -> Expect:
    cal = await w.op(json={"name": _n("cal")})
    return Expect("create", "calendar", cal["id"])


@example("calendars_update")
async def _calendars_update(w: World) -> Expect:
    cal = await w.setup("POST", "/calendars", json={"name": _n("cal")})
    await w.op(calendar_id=cal["id"], json={"description": "audited"})
    return Expect("update", "calendar", cal["id"])


@example("calendars_delete")
async def _calendars_delete(w: World) -> Expect:
    cal = await w.setup("POST", "/calendars", json={"name": _n("cal")})
    await w.op(calendar_id=cal["id"])
    return Expect("delete", "calendar", cal["id"])


# Triggers ----------------------------------------------------------------------------------------


async def _trigger(w: World, kind: str = "schedule") -> dict[str, Any]:
    process, _ = await make_process(w.tenant.ctx, w.tenant.account_id)
    body: dict[str, Any] = {
        "name": _n("trg"),
        "kind": kind,
        "process_id": str(process.id),
        "robot_id": str(await _robot(w, RobotRole.UNATTENDED)),
    }
    if kind == "schedule":
        body["cron"] = "0 9 * * 1-5"
    return await w.setup("POST", "/triggers", json=body)  # type: ignore[no-any-return]


@example("triggers_create")
async def _triggers_create(w: World) -> Expect:
    process, _ = await make_process(w.tenant.ctx, w.tenant.account_id)
    robot = await _robot(w, RobotRole.UNATTENDED)
    created = await w.op(
        json={
            "name": _n("trg"),
            "kind": "schedule",
            "cron": "0 9 * * 1-5",
            "time_zone": "Europe/Berlin",
            "process_id": str(process.id),
            "robot_id": str(robot),
        }
    )
    return Expect("create", "trigger", created["id"])


@example("triggers_update")
async def _triggers_update(w: World) -> Expect:
    trigger = await _trigger(w)
    await w.op(trigger_id=trigger["id"], json={"description": "audited"})
    return Expect("update", "trigger", trigger["id"])


@example("triggers_delete")
async def _triggers_delete(w: World) -> Expect:
    trigger = await _trigger(w)
    await w.op(trigger_id=trigger["id"])
    return Expect("delete", "trigger", trigger["id"])


@example("triggers_test")
async def _triggers_test(w: World) -> Expect:
    trigger = await _trigger(w)
    await w.op(trigger_id=trigger["id"])
    return Expect("test", "trigger", trigger["id"])


@example("triggers_rotate_webhook_secret")
async def _triggers_rotate_webhook_secret(w: World) -> Expect:
    trigger = await _trigger(w, "webhook")
    rotated = await w.op(trigger_id=trigger["id"])
    assert rotated["webhook_secret"] and rotated["webhook_secret"] != trigger["webhook_secret"]
    return Expect("rotate_secret", "trigger", trigger["id"])


@example("triggers_call_webhook")
async def _triggers_call_webhook(w: World) -> Expect:
    from rpa_api.triggers import webhook

    trigger = await _trigger(w, "webhook")
    body = b'{"invoice": "A-17"}'
    stamp = str(int(__import__("time").time()))
    headers = {
        "content-type": "application/json",
        "X-RPA-Timestamp": stamp,
        "X-RPA-Signature": webhook.signature(trigger["webhook_secret"], stamp, body),
    }
    await w.op(trigger_id=trigger["id"], content=body, headers=headers)
    return Expect("fire", "trigger", trigger["id"])


@example("triggers_import")
async def _triggers_import(w: World) -> Expect:
    process, _ = await make_process(w.tenant.ctx, w.tenant.account_id)
    await _trigger(w)
    exported = await w.client.get(f"{API}/triggers/export", headers=w.headers)
    assert exported.status_code == 200, exported.text
    lines = exported.text.splitlines()
    header, row = lines[0], lines[1]
    name = _n("imp")
    row = name + row[row.index(",") :]
    files = {"file": ("triggers.csv", f"{header}\n{row}\n".encode(), "text/csv")}
    imported = await w.op(files=files)
    del process
    return Expect("create", "trigger", imported["items"][0]["id"])


# Webhook subscriptions: the URL is a closed port on loopback (a ping answers "not delivered").
_HOOK_URL = "http://127.0.0.1:9/hook"


async def _webhook(w: World) -> dict[str, Any]:
    body = {"url": _HOOK_URL, "event_types": ["job.state"]}
    return await w.setup("POST", "/webhooks", json=body)  # type: ignore[no-any-return]


@example("webhooks_create")
async def _webhooks_create(w: World) -> Expect:
    created = await w.op(json={"url": _HOOK_URL, "event_types": ["job.state", "robot.status"]})
    return Expect("create", "webhook_subscription", created["id"])


@example("webhooks_update")
async def _webhooks_update(w: World) -> Expect:
    hook = await _webhook(w)
    await w.op(subscription_id=hook["id"], json={"description": "audited"})
    return Expect("update", "webhook_subscription", hook["id"])


@example("webhooks_delete")
async def _webhooks_delete(w: World) -> Expect:
    hook = await _webhook(w)
    await w.op(subscription_id=hook["id"])
    return Expect("delete", "webhook_subscription", hook["id"])


@example("webhooks_rotate_secret")
async def _webhooks_rotate_secret(w: World) -> Expect:
    hook = await _webhook(w)
    await w.op(subscription_id=hook["id"])
    return Expect("rotate_secret", "webhook_subscription", hook["id"])


@example("webhooks_pause")
async def _webhooks_pause(w: World) -> Expect:
    hook = await _webhook(w)
    await w.op(subscription_id=hook["id"])
    return Expect("pause", "webhook_subscription", hook["id"])


@example("webhooks_resume")
async def _webhooks_resume(w: World) -> Expect:
    hook = await _webhook(w)
    await w.setup("POST", f"/webhooks/{hook['id']}/pause")
    await w.op(subscription_id=hook["id"])
    return Expect("resume", "webhook_subscription", hook["id"])


@example("webhooks_ping")
async def _webhooks_ping(w: World) -> Expect:
    hook = await _webhook(w)
    await w.op(subscription_id=hook["id"])
    return Expect("ping", "webhook_subscription", hook["id"])


# Identity providers (LDAP) ------------------------------------------------------------------------


def _ldap_body(url: str) -> dict[str, Any]:
    from tests.sso.slapd_server import ROOT_DN, SUFFIX

    return {
        "name": _n("ldap"),
        "ldap": {"url": url, "bind_dn": ROOT_DN, "user_base_dn": f"ou=people,{SUFFIX}", "timeout_s": 2},
        "bind_password": SECRET,
    }


@example("identity_providers_create")
async def _identity_providers_create(w: World) -> Expect:
    idp = await w.op(json=_ldap_body("ldap://127.0.0.1:1"))
    return Expect("create", "identity_provider", idp["id"])


@example("identity_providers_update")
async def _identity_providers_update(w: World) -> Expect:
    idp = await w.setup("POST", "/identity-providers", json=_ldap_body("ldap://127.0.0.1:1"))
    await w.op(provider_id=idp["id"], json={"is_active": False, "bind_password": SECRET})
    return Expect("update", "identity_provider", idp["id"])


@example("identity_providers_delete")
async def _identity_providers_delete(w: World) -> Expect:
    idp = await w.setup("POST", "/identity-providers", json=_ldap_body("ldap://127.0.0.1:1"))
    await w.op(provider_id=idp["id"])
    return Expect("delete", "identity_provider", idp["id"])


@example("auth_ldap_token")
async def _auth_ldap_token(w: World) -> Expect:
    """Needs Debian's slapd (.ci/run installs it; `apt-get install slapd` on a developer's machine)."""
    import tempfile
    from pathlib import Path

    from tests.sso.slapd_server import ROOT_PW, Slapd, slapd_binary

    assert slapd_binary() is not None, "slapd is not installed: apt-get install slapd ldap-utils"
    with tempfile.TemporaryDirectory() as tmp:
        user = _n("ldapuser")
        server = Slapd(Path(tmp), [{"uid": user, "cn": "Walker Ldap", "password": SECRET}], {})
        try:
            body = _ldap_body(server.url)
            body["bind_password"] = ROOT_PW
            idp = await w.setup("POST", "/identity-providers", json=body)
            await w.op(headers={}, provider_id=idp["id"], data={"username": user, "password": SECRET})
        finally:
            server.stop()
    async with w.tenant.ctx.sessions() as session:
        from rpa_common.models import User

        user_id = (await session.execute(sa.select(User.id).where(User.username == user))).scalar_one()
    return Expect("login", "user", user_id)


def _oidc_body() -> dict[str, Any]:
    return {
        "name": _n("oidc"),
        "kind": "oidc",
        "oidc": {"issuer": "https://idp.rpa.test", "client_id": "rpa", "app_url": "https://app.rpa.test/"},
        "client_secret": SECRET,
    }


@example("auth_oidc_token")
async def _auth_oidc_token(w: World) -> Expect:
    """The hand-off after a callback (the whole flow against a real provider: tests/sso/test_oidc.py)."""
    from datetime import UTC, datetime, timedelta

    from rpa_common.models import OidcLogin
    from rpa_common.security import hash_key

    idp = await w.setup("POST", "/identity-providers", json=_oidc_body())
    code = uuid.uuid4().hex + uuid.uuid4().hex
    async with w.tenant.ctx.sessions() as session, session.begin():
        now = datetime.now(UTC)
        session.add(
            OidcLogin(
                provider_id=uuid.UUID(idp["id"]),
                state_hash=hash_key(code + "-state"),
                nonce="n",
                verifier_encrypted=b"-",
                redirect_uri="https://api.rpa.test/api/v1/auth/oidc/callback",
                created_at=now,
                expires_at=now + timedelta(minutes=2),
                callback_at=now,
                user_id=w.tenant.admin_id,
                handoff_hash=hash_key(code),
            )
        )
    await w.op(headers={}, json={"code": code})
    return Expect("login", "user", w.tenant.admin_id)
