"""The synchronous client: authentication, retries on 429/503, problem+json errors, pagination, and
typed helpers for what people do most (publish, jobs and their logs, queues, resources...).

Every operation of the API is reachable with ``Client.call(operation_id, ...)`` (the table in
``operations.py`` is generated from the OpenAPI document); the resource helpers below are built on it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from rpa_sdk.errors import ApiError
from rpa_sdk.operations import OPERATIONS

FINAL_STATES = frozenset({"Successful", "Failed", "Stopped", "Interrupted"})
RETRY_STATUSES = frozenset({429, 503})
USER_AGENT = "rpa-sdk/0.1"

Progress = Callable[[int, int], None]
"""Called with (bytes sent, total bytes) while a package uploads."""


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    text = response.text.strip()[:300]
    return {"title": response.reason_phrase or "Error", "status": response.status_code, "detail": text}


def retry_after_s(response: httpx.Response, default: float) -> float:
    """The ``Retry-After`` header in seconds (a number of seconds; an HTTP date is not used by the API)."""
    value = response.headers.get("Retry-After")
    if value is None:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        return default


class Client:
    """A session with one orchestrator.

    ``token`` is an access token or an API key (``rpak_...``); or call ``login(username, password)``.
    Answers 429 and 503 are retried up to ``max_retries`` times, after their ``Retry-After`` (capped at
    ``max_retry_wait`` seconds; a longer wait is not waited: the error is raised). Any other error
    answer raises ``ApiError``.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 4,
        max_retry_wait: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self._sleep = sleep
        self.http = httpx.Client(
            base_url=self.base_url, timeout=timeout, transport=transport, headers={"User-Agent": USER_AGENT}
        )
        self.processes = Processes(self)
        self.jobs = Jobs(self)
        self.robots = Robots(self)
        self.robot_groups = RobotGroups(self)
        self.queues = Queues(self)
        self.resources = Resources(self)
        self.triggers = Named(self, "triggers", "trigger_id")
        self.users = Named(self, "users", "user_id")
        self.roles = Named(self, "roles", "role_id")
        self.folders = Named(self, "folders", "folder_id")
        self.calendars = Named(self, "calendars", "calendar_id")
        self.api_keys = Named(self, "api_keys", "key_id", get=False, delete="revoke")

    # Plumbing -----------------------------------------------------------------------------------

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.token:
            headers.setdefault("Authorization", f"Bearer {self.token}")
        return headers

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Callable[[], Any] | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One call, retried on 429/503; raises ``ApiError`` for any answer >= 400.

        ``body`` makes the request's ``content`` afresh for each attempt (an upload's chunks).
        """
        attempt = 0
        while True:
            if body is not None:
                kwargs["content"] = body()
            response = self.http.request(method, path, headers=self._headers(headers), **kwargs)
            if response.status_code in RETRY_STATUSES and attempt < self.max_retries:
                wait = retry_after_s(response, default=min(2.0**attempt, self.max_retry_wait))
                if wait <= self.max_retry_wait:
                    attempt += 1
                    self._sleep(wait)
                    continue
            if response.status_code >= 400:
                raise ApiError(response.status_code, _problem(response))
            return response

    def call(
        self,
        operation_id: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        data: dict[str, Any] | None = None,
        files: Any = None,
        **path_params: Any,
    ) -> Any:
        """Any operation of the API by its ``operationId`` (``jobs_create``, ``robots_list``...).

        Path parameters are keyword arguments (``job_id=...``); the answer's JSON (None when empty).
        """
        try:
            method, template = OPERATIONS[operation_id]
        except KeyError:
            raise ValueError(f"unknown operation {operation_id!r}") from None
        path = template.format(**{k: str(v) for k, v in path_params.items()})
        query = {k: v for k, v in (params or {}).items() if v is not None}
        response = self.request(method, path, params=query, json=json, data=data, files=files)
        if not response.content:
            return None
        if "json" not in response.headers.get("content-type", ""):
            return response.content
        return response.json()

    def iterate(
        self, operation_id: str, *, params: dict[str, Any] | None = None, page_size: int = 200, **path: Any
    ) -> Iterator[dict[str, Any]]:
        """Every item of a list operation, page after page (``limit``/``offset`` pages with a ``total``,
        or the logs' ``cursor`` pages)."""
        query = dict(params or {})
        query["limit"] = page_size
        offset = 0
        while True:
            page = self.call(operation_id, params={**query, "offset": offset}, **path)
            if isinstance(page, list):  # a list answered whole
                yield from page
                return
            items = page["items"]
            yield from items
            if "next_cursor" in page:
                if not page["next_cursor"]:
                    return
                query["cursor"] = page["next_cursor"]
                continue
            offset += len(items)
            if not items or offset >= page["total"]:
                return

    # Authentication -----------------------------------------------------------------------------

    def login(self, username: str, password: str) -> dict[str, Any]:
        """Log in with a password (``POST /auth/token``); the client then sends the access token."""
        self.token = None
        answer: dict[str, Any] = self.call("auth_token", data={"username": username, "password": password})
        self.token = answer["access_token"]
        return answer

    def me(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("auth_me")
        return result

    def logs(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every log line matching the filters (``GET /logs``: job_id, robot_id, min_level, text...)."""
        return self.iterate("logs_list", params=filters, page_size=1000)

    def audit(self, **filters: Any) -> Iterator[dict[str, Any]]:
        return self.iterate("audit_list", params=filters)


class Named:
    """A resource with the usual list/get/create/update/delete operations (``{prefix}_{action}``)."""

    def __init__(
        self,
        client: Client,
        prefix: str,
        id_param: str,
        *,
        get: bool = True,
        delete: str = "delete",
        noun: str | None = None,
    ) -> None:
        self.noun = noun or id_param.removesuffix("_id").replace("_", " ")
        self.client = client
        self.prefix = prefix
        self.id_param = id_param
        self._get = get
        self._delete = delete

    def _path(self, item_id: str | uuid.UUID) -> dict[str, Any]:
        return {self.id_param: item_id}

    def list(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every item (all pages)."""
        return self.client.iterate(f"{self.prefix}_list", params=filters)

    def get(self, item_id: str | uuid.UUID) -> dict[str, Any]:
        result: dict[str, Any] = self.client.call(f"{self.prefix}_get", **self._path(item_id))
        return result

    def create(self, **body: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.client.call(f"{self.prefix}_create", json=body)
        return result

    def update(self, item_id: str | uuid.UUID, **body: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.client.call(f"{self.prefix}_update", json=body, **self._path(item_id))
        return result

    def delete(self, item_id: str | uuid.UUID) -> None:
        self.client.call(f"{self.prefix}_{self._delete}", **self._path(item_id))

    def find(self, name_or_id: str) -> dict[str, Any]:
        """The item whose id or name (exactly, any case) is ``name_or_id``; ``ApiError`` 404 otherwise."""
        try:
            uuid.UUID(name_or_id)
        except ValueError:
            pass
        else:
            return self.get(name_or_id)
        wanted = name_or_id.casefold()
        for item in self.list():
            if str(item.get("name", item.get("username", ""))).casefold() == wanted:
                return item
        raise ApiError(
            404,
            {"title": "Not Found", "status": 404, "detail": f"no {self.noun} named {name_or_id!r}"},
        )


def _multipart(fields: dict[str, str], name: str, filename: str, payload: bytes) -> tuple[str, bytes]:
    boundary = uuid.uuid4().hex
    parts = []
    for key, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        )
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        "Content-Type: application/zip\r\n\r\n".encode()
        + payload
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)


class Processes(Named):
    def __init__(self, client: Client) -> None:
        super().__init__(client, "processes", "process_id")

    def publish(
        self,
        package: bytes,
        *,
        filename: str = "package.zip",
        notes: str = "",
        make_current: bool = True,
        folder_id: str | None = None,
        progress: Progress | None = None,
        chunk_size: int = 64 * 1024,
    ) -> dict[str, Any]:
        """Upload a package (``POST /processes/publish``): a new process, or a new version of it.

        The answer: ``{"process": ..., "version": ..., "process_created": bool}``.
        """
        fields = {"notes": notes, "make_current": "true" if make_current else "false"}
        if folder_id:
            fields["folder_id"] = folder_id
        content_type, data = _multipart(fields, "package", filename, package)

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(data), chunk_size):
                chunk = data[start : start + chunk_size]
                yield chunk
                if progress is not None:
                    progress(start + len(chunk), len(data))

        response = self.client.request(
            "POST",
            OPERATIONS["processes_publish"][1],
            body=chunks,
            headers={"Content-Type": content_type, "Content-Length": str(len(data))},
        )
        result: dict[str, Any] = response.json()
        return result

    def versions(self, process_id: str) -> Iterator[dict[str, Any]]:
        return self.client.iterate("processes_list_versions", process_id=process_id)


class Jobs(Named):
    def __init__(self, client: Client) -> None:
        super().__init__(client, "jobs", "job_id")

    def start(
        self,
        process_id: str,
        *,
        robot_id: str | None = None,
        robot_group_id: str | None = None,
        input_args: dict[str, Any] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Create a job of a process on one robot or on any robot of a group."""
        body: dict[str, Any] = {"process_id": process_id, "input_args": input_args or {}, **fields}
        if robot_id:
            body["robot_id"] = robot_id
        if robot_group_id:
            body["robot_group_id"] = robot_group_id
        return self.create(**body)

    def stop(self, job_id: str) -> dict[str, Any]:
        """Ask the job's script to stop (soft stop)."""
        result: dict[str, Any] = self.client.call("jobs_stop", job_id=job_id)
        return result

    def interrupt(self, job_id: str) -> dict[str, Any]:
        """Kill the job's script (hard stop)."""
        result: dict[str, Any] = self.client.call("jobs_interrupt", job_id=job_id)
        return result

    def explain(self, job_id: str) -> dict[str, Any]:
        """Why the job is pending (or what it does now): ``{job_id, state, waiting, reasons}``, each
        reason a stable ``code``, a ``message`` and the fields it names."""
        result: dict[str, Any] = self.client.call("jobs_explain", job_id=job_id)
        return result

    def logs(self, job_id: str, **filters: Any) -> Iterator[dict[str, Any]]:
        """The job's log lines so far, oldest first (all pages)."""
        return self.client.iterate("jobs_logs", params=filters, page_size=1000, job_id=job_id)

    def follow(
        self, job_id: str, *, poll_s: float = 1.0, timeout_s: float | None = None
    ) -> Iterator[dict[str, Any]]:
        """The job's log lines as they come (polling with the logs' cursor), until the job is final
        and every line was read. ``job(job_id)`` afterwards tells how it ended."""
        seen: set[str] = set()
        cursor: str | None = None
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            final = self.get(job_id)["state"] in FINAL_STATES
            while True:  # drain what is there
                page = self.client.call(
                    "jobs_logs", params={"cursor": cursor, "limit": 1000, "order": "asc"}, job_id=job_id
                )
                for line in page["items"]:
                    if line["id"] not in seen:
                        seen.add(line["id"])
                        yield line
                if not page["next_cursor"]:
                    break
                cursor = page["next_cursor"]
            if final:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not final after {timeout_s} s")
            time.sleep(poll_s)

    def stream(self, job_id: str, *, cursor: str | None = None) -> Iterator[dict[str, Any]]:
        """The job's live tail (``GET /jobs/{id}/logs/stream``, Server-Sent Events) until its ``end``
        event; reconnects after a dropped connection from the last line received."""
        path = OPERATIONS["jobs_stream_logs"][1].format(job_id=job_id)
        last_id = cursor
        while True:
            headers = self.client._headers({"Accept": "text/event-stream"})
            if last_id:
                headers["Last-Event-ID"] = last_id
            try:
                with self.client.http.stream(
                    "GET", path, headers=headers, timeout=httpx.Timeout(30.0, read=60.0)
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise ApiError(response.status_code, _problem(response))
                    event, event_id = "message", None
                    data: list[str] = []
                    for raw in response.iter_lines():
                        if raw == "":
                            if event == "end":
                                return
                            if event == "log" and data:
                                yield json.loads("\n".join(data))
                                if event_id:
                                    last_id = event_id
                            event, data, event_id = "message", [], None  # next event
                        elif raw.startswith(":"):
                            continue
                        else:
                            key, _, value = raw.partition(":")
                            value = value.removeprefix(" ")
                            if key == "event":
                                event = value
                            elif key == "data":
                                data.append(value)
                            elif key == "id":
                                event_id = value
            except (httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError):
                pass  # reconnect from the last line
            if self.get(job_id)["state"] in FINAL_STATES and last_id is None:
                return

    def wait(self, job_id: str, *, poll_s: float = 1.0, timeout_s: float | None = None) -> dict[str, Any]:
        """The job once final."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.get(job_id)
            if job["state"] in FINAL_STATES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not final after {timeout_s} s")
            time.sleep(poll_s)


class Robots(Named):
    def __init__(self, client: Client) -> None:
        super().__init__(client, "robots", "robot_id")

    def rotate_key(self, robot_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.client.call("robots_rotate_key", robot_id=robot_id)
        return result


class RobotGroups(Named):
    def __init__(self, client: Client) -> None:
        super().__init__(client, "robot_groups", "group_id", noun="robot group")

    def add_member(self, group_id: str, robot_id: str) -> None:
        self.client.call("robot_groups_add_member", group_id=group_id, robot_id=robot_id)

    def remove_member(self, group_id: str, robot_id: str) -> None:
        self.client.call("robot_groups_remove_member", group_id=group_id, robot_id=robot_id)


class Queues(Named):
    def __init__(self, client: Client) -> None:
        super().__init__(client, "queues", "queue_id")

    def add_task(
        self, queue_id: str, name: str, parameters: dict[str, Any] | None = None, **fields: Any
    ) -> dict[str, Any]:
        result: dict[str, Any] = self.client.call(
            "tasks_add", json={"name": name, "parameters": parameters or {}, **fields}, queue_id=queue_id
        )
        return result

    def add_tasks(self, queue_id: str, tasks: list[dict[str, Any]]) -> Any:
        return self.client.call("tasks_add_bulk", json={"tasks": tasks}, queue_id=queue_id)

    def tasks(self, queue_id: str, **filters: Any) -> Iterator[dict[str, Any]]:
        return self.client.iterate("tasks_list", params=filters, queue_id=queue_id)

    def stats(self, queue_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.client.call("queues_stats", queue_id=queue_id)
        return result


class Resources(Named):
    """Resources (text, credentials, calendar) and their values. Passwords are write-only: this SDK
    sends them, never prints or logs them; ``reveal`` is the API's audited read."""

    def __init__(self, client: Client) -> None:
        super().__init__(client, "resources", "resource_id")

    def list_groups(self) -> Iterator[dict[str, Any]]:
        return self.client.iterate("resources_list_groups")

    def create_group(self, name: str, **fields: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.client.call("resources_create_group", json={"name": name, **fields})
        return result

    def values(self, resource_id: str) -> Any:
        return self.client.call("resources_list_values", resource_id=resource_id)

    def set_value(self, resource_id: str, *, scope: str = "all", **value: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.client.call(
            "resources_set_value", json={"scope": scope, **value}, resource_id=resource_id
        )
        return result

    def set_text(
        self, name: str, text: str, *, group: str = "default", description: str = ""
    ) -> dict[str, Any]:
        """Set the text resource ``name`` (all robots' value), creating it (and its group) when new."""
        resource = self._by_name(name)
        if resource is None:
            group_id = self._group_id(group)
            resource = self.create(group_id=group_id, name=name, kind="text", description=description)
        return self.set_value(resource["id"], scope="all", text=text)

    def set_credentials(
        self,
        name: str,
        login: str,
        password: str,
        *,
        group: str = "default",
        scope: str = "all",
        **fields: Any,
    ) -> dict[str, Any]:
        """Set the credentials resource ``name`` (created when new). The answer never holds the password."""
        resource = self._by_name(name)
        if resource is None:
            resource = self.create(group_id=self._group_id(group), name=name, kind="credentials")
        return self.set_value(resource["id"], scope=scope, login=login, password=password, **fields)

    def _by_name(self, name: str) -> dict[str, Any] | None:
        wanted = name.casefold()
        for item in self.list(name=name):
            if item["name"].casefold() == wanted:
                return item
        return None

    def _group_id(self, group: str) -> str:
        for item in self.list_groups():
            if item["name"].casefold() == group.casefold() or item["id"] == group:
                return str(item["id"])
        return str(self.create_group(group)["id"])
