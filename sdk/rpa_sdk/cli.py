"""The ``rpa`` command: publish processes, run jobs and follow their logs, manage robots, queues and
resources from a shell or a CI pipeline.

Secrets never go on the command line: a password or API key is read from a prompt, from stdin
(``--password-stdin``) or from ``RPA_PASSWORD`` / ``RPA_API_KEY``. ``RPA_SERVER`` with
``RPA_API_KEY`` works without ``rpa login`` (CI). Errors are one line on stderr, exit code 1.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from rpa_sdk import config
from rpa_sdk.client import FINAL_STATES, Client
from rpa_sdk.errors import ApiError
from rpa_sdk.packaging import PackageError, build_package

app = typer.Typer(
    help="Command line of the RPA orchestrator.", no_args_is_help=True, pretty_exceptions_enable=False
)
jobs_app = typer.Typer(help="Start, stop and follow jobs.", no_args_is_help=True)
logs_app = typer.Typer(help="Read robot log lines.", no_args_is_help=True)
robots_app = typer.Typer(help="Robots.", no_args_is_help=True)
queues_app = typer.Typer(help="Queues and their tasks.", no_args_is_help=True)
resources_app = typer.Typer(help="Resources (text values) and credentials.", no_args_is_help=True)
processes_app = typer.Typer(help="Processes and their versions.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(logs_app, name="logs")
app.add_typer(robots_app, name="robots")
app.add_typer(queues_app, name="queues")
app.add_typer(resources_app, name="resources")
app.add_typer(processes_app, name="processes")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ProfileOpt = Annotated[str | None, typer.Option("--profile", "-p", envvar="RPA_PROFILE", help="Profile name")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (one array) instead of a table")]


class CliError(Exception):
    """A failure shown as one line (no traceback)."""


# Profiles and the client --------------------------------------------------------------------------


def _jwt_exp(token: str) -> float | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        return float(payload["exp"])
    except (ValueError, KeyError, TypeError):
        return None


def client_for(profile_name: str | None) -> Client:
    """A client of the profile (or of ``RPA_SERVER`` + ``RPA_API_KEY``), with a fresh token."""
    env_server, env_key = os.environ.get("RPA_SERVER"), os.environ.get("RPA_API_KEY")
    default, profiles = config.load_profiles()
    name = profile_name or default
    profile = profiles.get(name) if name else None
    if env_key and (env_server or profile):
        return Client(env_server or profile.server, env_key)  # type: ignore[union-attr]
    if profile is None:
        if profile_name:
            raise CliError(f"no profile named {profile_name!r}: run 'rpa login --profile {profile_name}'")
        raise CliError("not logged in: run 'rpa login --server URL' (or set RPA_SERVER and RPA_API_KEY)")
    secret = config.load_secret(profile)
    if not secret:
        raise CliError(f"profile {profile.name!r} has no stored secret: run 'rpa login' again")
    if profile.auth == "api_key":
        return Client(profile.server, secret)
    tokens = json.loads(secret)
    client = Client(profile.server, tokens["access_token"])
    exp = _jwt_exp(tokens["access_token"])
    if exp is not None and exp - time.time() < 30 and tokens.get("refresh_token"):
        try:
            fresh = client.call("auth_refresh", json={"refresh_token": tokens["refresh_token"]})
        except ApiError as exc:
            raise CliError(
                f"the session of profile {profile.name!r} ended ({exc.detail}): run 'rpa login'"
            ) from exc
        client.token = fresh["access_token"]
        config.store_secret(profile.name, json.dumps(_tokens(fresh)))
    return client


def _tokens(answer: dict[str, Any]) -> dict[str, Any]:
    return {"access_token": answer["access_token"], "refresh_token": answer.get("refresh_token")}


def _secret_input(env_var: str, stdin: bool, prompt: str) -> str:
    if stdin:
        value = sys.stdin.readline().rstrip("\r\n")
    elif os.environ.get(env_var):
        value = os.environ[env_var]
    elif sys.stdin.isatty():
        value = typer.prompt(prompt, hide_input=True)
    else:
        raise CliError(
            f"no {prompt.lower()}: set {env_var}, pass it on stdin with --*-stdin, or run in a terminal"
        )
    if not value:
        raise CliError(f"empty {prompt.lower()}")
    return value


@app.command()
def login(
    server: Annotated[str | None, typer.Option(envvar="RPA_SERVER", help="The orchestrator's URL")] = None,
    username: Annotated[str | None, typer.Option("--username", "-u", envvar="RPA_USERNAME")] = None,
    api_key: Annotated[
        bool, typer.Option("--api-key", help="Log in with an API key (RPA_API_KEY, stdin or prompt)")
    ] = False,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password or key from stdin")
    ] = False,
    profile: ProfileOpt = None,
) -> None:
    """Log in and keep the session as a profile (the secret in the OS keyring, else a 0600 file)."""
    _, profiles = config.load_profiles()
    name = profile or "default"
    known = profiles.get(name)
    server = server or (known.server if known else None)
    if not server:
        raise CliError("--server is required for a new profile")
    client = Client(server)
    if api_key:
        secret = _secret_input("RPA_API_KEY", password_stdin, "API key")
        client.token = secret
        me = client.me()
        stored, auth, user = secret, "api_key", me["user"]["username"] if "user" in me else None
    else:
        username = username or (known.username if known else None) or typer.prompt("Username")
        password = _secret_input("RPA_PASSWORD", password_stdin, "Password")
        answer = client.login(username, password)
        stored, auth, user = json.dumps(_tokens(answer)), "token", username
    where = config.store_secret(name, stored)
    config.save_profile(config.Profile(name=name, server=server, username=user, auth=auth, store=where))
    out.print(f"Logged in to {server} as {user or 'API key'} (profile {name}).")
    if where == "file":
        err.print(
            f"No OS keyring available: the secret is kept in {config.secrets_file()} (readable by you only)."
        )


# Output helpers -----------------------------------------------------------------------------------


def _print_list(items: list[dict[str, Any]], columns: list[str], as_json: bool, title: str) -> None:
    if as_json:
        out.print_json(json.dumps(items, default=str))
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for item in items:
        table.add_row(*("" if item.get(c) is None else str(item.get(c)) for c in columns))
    out.print(table)


def _print_line(line: dict[str, Any]) -> None:
    at = str(line.get("at", ""))[:23].replace("T", " ")
    out.print(f"{at} {line.get('level', ''):<8} {line.get('message', '')}", markup=False)


def _pairs(values: list[str] | None, option: str) -> dict[str, Any]:
    """``k=v`` pairs; a value that is JSON (``3``, ``true``, ``[1,2]``) is taken as such, else as text."""
    result: dict[str, Any] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CliError(f"{option} {item!r}: expected KEY=VALUE")
        try:
            result[key] = json.loads(raw)
        except ValueError:
            result[key] = raw
    return result


# Processes ----------------------------------------------------------------------------------------


@app.command()
def publish(
    folder: Annotated[Path, typer.Argument(help="The package's folder (with rpa.json at its root)")],
    notes: Annotated[str, typer.Option(help="Release notes")] = "",
    make_current: Annotated[bool, typer.Option(help="New jobs take this version")] = True,
    profile: ProfileOpt = None,
) -> None:
    """Build the package of FOLDER and upload it as a new version (a new process the first time)."""
    manifest, package = build_package(folder)
    client = client_for(profile)
    with Progress(
        TextColumn("Uploading {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(f"{manifest['name']} {manifest['version']}", total=len(package))
        result = client.processes.publish(
            package,
            filename=f"{manifest['name']}-{manifest['version']}.zip",
            notes=notes,
            make_current=make_current,
            progress=lambda sent, total: bar.update(task, completed=sent),
        )
    verb = "Created process" if result["process_created"] else "Published"
    out.print(
        f"{verb} {result['process']['name']} version {result['version']['version']} "
        f"({len(package)} bytes, version id {result['version']['id']})",
        markup=False,
    )


@processes_app.command("list")
def processes_list(as_json: JsonOpt = False, profile: ProfileOpt = None) -> None:
    """List processes."""
    items = list(client_for(profile).processes.list())
    _print_list(items, ["id", "name", "description"], as_json, "Processes")


# Jobs ---------------------------------------------------------------------------------------------


@jobs_app.command("start")
def jobs_start(
    process: Annotated[str, typer.Argument(help="Process name or id")],
    robot: Annotated[str | None, typer.Option(help="Robot name or id")] = None,
    group: Annotated[str | None, typer.Option(help="Robot group name or id")] = None,
    arg: Annotated[
        list[str] | None, typer.Option("--arg", help="Input argument KEY=VALUE (repeatable)")
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="Print the job's logs until it ends; exit 0 only if Successful")
    ] = False,
    timeout: Annotated[
        float | None, typer.Option(help="With --wait: give up after this many seconds")
    ] = None,
    profile: ProfileOpt = None,
) -> None:
    """Start a job of PROCESS on a robot or on any robot of a group."""
    if (robot is None) == (group is None):
        raise CliError("give exactly one of --robot and --group")
    input_args = _pairs(arg, "--arg")
    client = client_for(profile)
    process_id = client.processes.find(process)["id"]
    robot_id = client.robots.find(robot)["id"] if robot else None
    group_id = client.robot_groups.find(group)["id"] if group else None
    job = client.jobs.start(process_id, robot_id=robot_id, robot_group_id=group_id, input_args=input_args)
    err.print(f"Job {job['id']} {job['state']}")
    if not wait:
        out.print(job["id"])
        return
    for line in client.jobs.follow(job["id"], timeout_s=timeout):
        _print_line(line)
    _finish(client.jobs.get(job["id"]))


def _finish(job: dict[str, Any]) -> None:
    state = job["state"]
    if state == "Successful":
        err.print(f"Job {job['id']} Successful")
        if job.get("output_args"):
            err.print(f"Output: {json.dumps(job['output_args'])}", markup=False)
        return
    reason = f": {job['error']}" if job.get("error") else ""
    err.print(f"Job {job['id']} {state}{reason}", markup=False)
    raise typer.Exit(1)


@jobs_app.command("list")
def jobs_list(
    state: Annotated[str | None, typer.Option(help="Only jobs in this state")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest first)")] = 50,
    as_json: JsonOpt = False,
    profile: ProfileOpt = None,
) -> None:
    """List jobs, newest first."""
    client = client_for(profile)
    items = []
    for item in client.jobs.list(state=state, sort="-created_at"):
        items.append(item)
        if len(items) >= limit:
            break
    _print_list(items, ["id", "state", "process_id", "robot_id", "created_at"], as_json, "Jobs")


@jobs_app.command("get")
def jobs_get(job: str, profile: ProfileOpt = None) -> None:
    """A job as JSON."""
    out.print_json(json.dumps(client_for(profile).jobs.get(job), default=str))


@jobs_app.command("stop")
def jobs_stop(job: str, profile: ProfileOpt = None) -> None:
    """Ask a job's script to stop."""
    answer = client_for(profile).jobs.stop(job)
    out.print(f"Job {job} {answer.get('state', 'stopping')}")


@jobs_app.command("interrupt")
def jobs_interrupt(job: str, profile: ProfileOpt = None) -> None:
    """Kill a job's script."""
    answer = client_for(profile).jobs.interrupt(job)
    out.print(f"Job {job} {answer.get('state', 'interrupting')}")


@jobs_app.command("explain")
def jobs_explain(job: str, as_json: JsonOpt = False, profile: ProfileOpt = None) -> None:
    """Why is JOB pending? What it waits for (or what it does now), one reason a line."""
    answer = client_for(profile).jobs.explain(job)
    if as_json:
        out.print_json(json.dumps(answer, default=str))
        return
    waiting = "waiting" if answer["waiting"] else "not waiting"
    out.print(f"Job {answer['job_id']} {answer['state']} ({waiting})", markup=False)
    for reason in answer["reasons"]:
        out.print(f"  {reason['code']}: {reason['message']}", markup=False)


@jobs_app.command("wait")
def jobs_wait(job: str, timeout: float | None = None, profile: ProfileOpt = None) -> None:
    """Print a job's logs until it ends; exit 0 only if it ends Successful."""
    client = client_for(profile)
    for line in client.jobs.follow(job, timeout_s=timeout):
        _print_line(line)
    _finish(client.jobs.get(job))


# Logs ---------------------------------------------------------------------------------------------


@logs_app.command("tail")
def logs_tail(
    job: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until the job ends")
    ] = False,
    as_json: JsonOpt = False,
    profile: ProfileOpt = None,
) -> None:
    """Print a job's log lines (with -f: live, from the SSE stream, until the job ends)."""
    client = client_for(profile)
    lines = client.jobs.stream(job) if follow else client.jobs.logs(job, order="asc")
    for line in lines:
        if as_json:
            out.print(json.dumps(line, default=str), markup=False)
        else:
            _print_line(line)


@logs_app.command("list")
def logs_list(
    job: Annotated[str | None, typer.Option(help="Lines of this job")] = None,
    robot: Annotated[str | None, typer.Option(help="Lines of this robot (id)")] = None,
    min_level: Annotated[str | None, typer.Option(help="This level and above")] = None,
    text: Annotated[str | None, typer.Option(help="The message contains it")] = None,
    limit: int = 100,
    as_json: JsonOpt = False,
    profile: ProfileOpt = None,
) -> None:
    """Newest log lines matching the filters."""
    client = client_for(profile)
    page = client.call(
        "logs_list",
        params={"job_id": job, "robot_id": robot, "min_level": min_level, "text": text, "limit": limit},
    )
    _print_list(page["items"], ["at", "level", "message", "job_id"], as_json, "Logs")


# Robots, queues, resources ------------------------------------------------------------------------


@robots_app.command("list")
def robots_list(as_json: JsonOpt = False, profile: ProfileOpt = None) -> None:
    """List robots and their state."""
    items = list(client_for(profile).robots.list())
    _print_list(items, ["id", "name", "role", "state"], as_json, "Robots")


@queues_app.command("list")
def queues_list(as_json: JsonOpt = False, profile: ProfileOpt = None) -> None:
    """List queues."""
    items = list(client_for(profile).queues.list())
    _print_list(items, ["id", "name", "description"], as_json, "Queues")


@queues_app.command("add-task")
def queues_add_task(
    queue: Annotated[str, typer.Argument(help="Queue name or id")],
    name: Annotated[str, typer.Option(help="The task's name")],
    param: Annotated[
        list[str] | None, typer.Option("--param", help="Parameter KEY=VALUE (repeatable)")
    ] = None,
    priority: Annotated[int | None, typer.Option(help="The task's priority")] = None,
    profile: ProfileOpt = None,
) -> None:
    """Add a task to a queue."""
    client = client_for(profile)
    queue_id = client.queues.find(queue)["id"]
    fields = {} if priority is None else {"priority": priority}
    task = client.queues.add_task(queue_id, name, _pairs(param, "--param"), **fields)
    out.print(f"Task {task['id']} added to {queue}")


@resources_app.command("list")
def resources_list(as_json: JsonOpt = False, profile: ProfileOpt = None) -> None:
    """List resources (never their passwords)."""
    items = list(client_for(profile).resources.list())
    _print_list(items, ["id", "name", "kind", "description"], as_json, "Resources")


@resources_app.command("set")
def resources_set(
    name: str,
    value: str,
    group: Annotated[
        str, typer.Option(help="Resource group of a new resource (created if needed)")
    ] = "default",
    profile: ProfileOpt = None,
) -> None:
    """Set the text resource NAME to VALUE for every robot (created when new). Not for secrets: use
    'rpa resources set-credentials'."""
    client_for(profile).resources.set_text(name, value, group=group)
    out.print(f"Resource {name} set")


@resources_app.command("set-credentials")
def resources_set_credentials(
    name: str,
    login: Annotated[str, typer.Option(help="The login")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin")
    ] = False,
    group: Annotated[str, typer.Option(help="Resource group of a new resource")] = "default",
    profile: ProfileOpt = None,
) -> None:
    """Set credentials NAME: the password from RPA_CREDENTIAL_PASSWORD, stdin or a prompt (never printed)."""
    password = _secret_input("RPA_CREDENTIAL_PASSWORD", password_stdin, "Password")
    client_for(profile).resources.set_credentials(name, login, password, group=group)
    out.print(f"Credentials {name} set")


@app.command("whoami")
def whoami(profile: ProfileOpt = None) -> None:
    """Who the current profile is logged in as."""
    me = client_for(profile).me()
    out.print_json(json.dumps(me, default=str))


def main() -> None:
    try:
        app()
    except ApiError as exc:
        err.print(f"rpa: error: {exc}", markup=False)
        sys.exit(1)
    except (CliError, PackageError, TimeoutError) as exc:
        err.print(f"rpa: error: {exc}", markup=False)
        sys.exit(1)
    except httpx.HTTPError as exc:
        err.print(f"rpa: error: cannot reach the server: {exc}", markup=False)
        sys.exit(1)


__all__ = ["FINAL_STATES", "app", "main"]
