"""The API's contract: what the OpenAPI document says about every operation, and the answers that keep it true.

- **Operation ids** read like the API: ``{resource}_{action}`` (``jobs_create``, ``robots_list``,
  ``robot_groups_add_member``), from the operation's tag and its handler's name less the resource's
  noun, so a generated client reads ``jobs_create.sync(...)``, not ``create_job_api_v1_jobs_post``.
- **Errors** are one ``ProblemDetails`` schema (RFC 9457), ``application/problem+json``. Each
  operation declares the statuses it can answer: those that follow from its shape are added here
  (401 for a secured operation, 403 for one that needs a permission, 404 for one with path
  parameters, 400/413/415 for one with a body, 422 for one with any input, 503 when the database
  cannot be reached in time); a router declares the rest (409, 429, a 404 for an id in the body) with
  ``errors(...)``, and only their descriptions.
- **405** answers carry an ``Allow`` header with every method of the path, not only those of the
  first route that matched it.

docs/api-guide.md explains the same rules to the API's users.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, routing
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response

from rpa_common.errors import PROBLEM_JSON
from rpa_common.service import problem

PROBLEM_REF = "#/components/schemas/ProblemDetails"

API_DESCRIPTION = """Management API: publish processes, run jobs on robots, manage queues, resources and people.

Conventions (docs/api-guide.md): every error is an RFC 9457 `application/problem+json` document
(`ProblemDetails`) whose `errors` name the fields at fault; each operation lists the statuses it
answers. Text never holds NUL (U+0000) nor invalid UTF-8 (422). An id in a path that is not a UUID,
or that names no object of the caller's account, is 404; so is an unknown id in a body (naming the
field). A body field that may be left out but not nulled has no `null` in its schema. Lists take
`limit` (1-500), `offset` (0 to 2^53-1) and `sort` (one of the listed fields, `-` for descending).
"""

# The problem document every error answers (rpa_common.service.problem, DomainError.to_problem).
_SCHEMAS: dict[str, dict[str, Any]] = {
    "ProblemDetails": {
        "title": "ProblemDetails",
        "description": "An RFC 9457 problem document; `errors` names the fields at fault.",
        "type": "object",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string", "description": "A URI naming the kind of problem; `about:blank`"},
            "title": {"type": "string", "description": "Short summary of the kind of problem"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599, "description": "The HTTP status"},
            "detail": {"type": "string", "description": "What went wrong, for a person"},
            "instance": {"type": "string", "description": "The request path"},
            "request_id": {"type": "string", "description": "The X-Request-ID of the request"},
            "errors": {"type": "array", "items": {"$ref": "#/components/schemas/FieldError"}},
        },
        "additionalProperties": True,
    },
    "FieldError": {
        "title": "FieldError",
        "description": "One field at fault: its dotted path (`items.0.name`), or `body` for the whole body.",
        "type": "object",
        "required": ["field", "message"],
        "properties": {
            "field": {"type": "string"},
            "message": {"type": "string"},
            "type": {"type": "string", "description": "A machine-readable kind (pydantic's error type)"},
        },
        "additionalProperties": True,
    },
}

_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before trying again", "schema": {"type": "integer"}}
}

# What each status means when a router does not say more.
DESCRIPTIONS: dict[int, str] = {
    400: "The body is not valid JSON",
    401: "No token, or a forged, expired or revoked token or API key",
    403: "The caller's roles do not allow this",
    404: "No such object in the caller's account",
    409: "Conflicts with the current state",
    413: "The body is over the size limit",
    415: "The body is not of a media type this operation takes",
    422: "A field is missing, unknown, of the wrong type or out of range (named in `errors`)",
    429: "Too many requests (see Retry-After)",
    503: "The database did not answer in time; retry after Retry-After seconds",
}


def errors(*statuses: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: the statuses it answers beyond those its shape implies.

    ``errors(409)`` uses the generic description; ``errors(s409="name taken")`` gives its own.
    The content (``application/problem+json``, ``ProblemDetails``) is filled in by ``finish``.
    """
    out: dict[int | str, dict[str, Any]] = {s: {"description": DESCRIPTIONS[s]} for s in statuses}
    for key, text in described.items():
        out[int(key.lstrip("s"))] = {"description": text}
    return out


# Operation ids ------------------------------------------------------------------------------------


def _singular(word: str) -> str:
    if word.endswith("sses") or word.endswith("ses"):
        return word[:-2]
    return word[:-1] if word.endswith("s") else word


def resource_of(route: Any) -> str:
    """The resource an operation acts on: its last tag, snake_case (``robot groups`` -> ``robot_groups``)."""
    tags = list(getattr(route, "tags", None) or [])
    return re.sub(r"[^a-z0-9]+", "_", str(tags[-1]).lower()).strip("_") if tags else ""


def operation_id(route: Any) -> str:
    """``{resource}_{action}``: the handler's name less the resource's noun (``create_job`` -> ``jobs_create``)."""
    name: str = route.name
    resource = resource_of(route)
    if not resource:
        return name
    words = resource.split("_")
    # The whole noun first (``api_key``), then its last word alone (``group`` of ``robot_groups``).
    for noun in (resource, _singular(resource), words[-1], _singular(words[-1])):
        stripped = re.sub(rf"(^|_){re.escape(noun)}(_|$)", r"\1", name).strip("_")
        if stripped != name:
            name = stripped
            break
    return f"{resource}_{name or 'call'}"


# The document -------------------------------------------------------------------------------------


def _api_routes(app: FastAPI) -> Iterator[Any]:
    for context in routing.iter_route_contexts(app.routes):
        if isinstance(context.original_route, routing.APIRoute) and context.include_in_schema:
            yield context


def _calls(dependant: Dependant) -> Iterator[Any]:
    for dep in dependant.dependencies:
        yield dep.call
        yield from _calls(dep)


def permission_of(route: Any) -> str | None:
    """``object:action`` when a ``rpa_api.deps.require`` dependency guards the route (it can answer 403)."""
    for call in _calls(route.dependant):
        permission = getattr(call, "permission", None)
        if permission is not None:
            return str(permission)
    return None


def _refers_by_id(doc: dict[str, Any], body: dict[str, Any]) -> bool:
    """Whether a request body names other objects by id (``robot_id``, ``folder_ids``...): 404 if unknown."""
    for media in body.get("content", {}).values():
        schema = media.get("schema", {})
        if "$ref" in schema:
            schema = doc["components"]["schemas"].get(schema["$ref"].rsplit("/", 1)[1], {})
        for name, prop in schema.get("properties", {}).items():
            if re.search(r"_ids?$", name):
                return True
            if "$ref" in prop and _refers_by_id(doc, {"content": {"-": {"schema": prop}}}):
                return True
    return False


def _implied(doc: dict[str, Any], op: dict[str, Any], route: Any, path: str) -> set[int]:
    """The statuses an operation answers because of its shape (see the module docstring)."""
    statuses: set[int] = set()
    params = op.get("parameters", [])
    body = op.get("requestBody")
    if not path.startswith("/api/"):
        return statuses  # health: no database in the way of /healthz; /readyz says its own 503
    statuses.add(503)
    if op.get("security"):
        statuses.add(401)
    if permission_of(route) is not None:
        statuses.add(403)
    if any(p.get("in") == "path" for p in params) or (body and _refers_by_id(doc, body)):
        statuses.add(404)
    if params or body:
        statuses.add(422)
    if body:
        statuses.update((400, 413, 415))  # 400: JSON, multipart or form that cannot be parsed
    return statuses


def _drop_null(schema: dict[str, Any]) -> None:
    """A query string, header or form field cannot say null: an optional one is just left out."""
    options = schema.get("anyOf")
    if not options or not any(o.get("type") == "null" for o in options):
        return
    rest = [o for o in options if o.get("type") != "null"]
    del schema["anyOf"]
    if len(rest) == 1:
        schema.update(rest[0])
    else:
        schema["anyOf"] = rest
    if schema.get("default", ...) is None:
        del schema["default"]


def _no_null_outside_json(doc: dict[str, Any], op: dict[str, Any]) -> None:
    for param in op.get("parameters", []):
        _drop_null(param.get("schema", {}))
    for ctype, media in op.get("requestBody", {}).get("content", {}).items():
        if "json" in ctype:
            continue
        schema = media.get("schema", {})
        if "$ref" in schema:
            schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        for prop in schema.get("properties", {}).values():
            _drop_null(prop)
            if prop.get("type") == "string" and "contentMediaType" in prop:
                # An uploaded file: OpenAPI 3.0's spelling too, which client generators know as binary.
                prop["format"] = "binary"


def _problem_response(status: int, description: str | None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description or DESCRIPTIONS.get(status, "Error"),
        "content": {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_REF}}},
    }
    if status in (429, 503):
        answer["headers"] = dict(_RETRY_AFTER)
    return answer


def build_openapi(app: FastAPI) -> dict[str, Any]:
    doc = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
        servers=app.servers,
    )
    routes = {(method.lower(), r.path_format): r for r in _api_routes(app) for method in r.methods or ()}
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            route = routes.get((method, path))
            if route is None:
                continue
            _no_null_outside_json(doc, op)
            permission = permission_of(route)
            if permission is not None:
                needs = f"Needs the permission `{permission}`."
                op["description"] = f"{op['description']}\n\n{needs}" if op.get("description") else needs
            responses: dict[str, Any] = op.setdefault("responses", {})
            wanted = _implied(doc, op, route, path) | {
                int(s) for s in responses if s.isdigit() and int(s) >= 400
            }
            for status in sorted(wanted):
                declared = responses.get(str(status), {})
                description = declared.get("description")
                if status == 422 and description == "Validation Error":  # FastAPI's own default
                    description = None
                answer = _problem_response(status, description)
                # An answer in another media type too (the token endpoint's OAuth2 errors, RFC 6749).
                for media, content in declared.get("content", {}).items():
                    fastapi_default = "HTTPValidationError" in content.get("schema", {}).get("$ref", "")
                    if media != PROBLEM_JSON and not fastapi_default:
                        answer["content"][media] = content
                responses[str(status)] = answer
            op["responses"] = dict(sorted(responses.items()))
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas.update(_SCHEMAS)
    doc["components"]["schemas"] = dict(sorted(schemas.items()))
    _add_links(doc)
    return doc


def _add_links(doc: dict[str, Any]) -> None:
    """OpenAPI links from each create to the created item's operations: ``POST /x`` answering an
    object with an ``id`` links to every operation on ``/x/{param}`` (and below it, ``/x/{param}/...``)
    whose path parameters are that one and the create's own, ``param`` taken from
    ``$response.body#/id`` and the others from the create's path (``POST /x/{a}/y`` links to
    ``/x/{a}/y/{b}``). Clients and stateful testers (schemathesis) follow them: create, then get,
    update, delete what was created."""
    schemas = doc.get("components", {}).get("schemas", {})
    paths = doc.get("paths", {})
    for path, item in paths.items():
        create = item.get("post")
        if create is None or path.endswith("}"):
            continue
        ok = create.get("responses", {}).get("201") or create.get("responses", {}).get("200")
        ref = ((ok or {}).get("content", {}).get("application/json", {}).get("schema", {})).get("$ref", "")
        created = schemas.get(ref.rsplit("/", 1)[-1], {}) if ref else {}
        if "id" not in created.get("properties", {}):
            continue
        own = re.findall(r"\{(\w+)\}", path)
        links: dict[str, Any] = {}
        for other, other_item in paths.items():
            match = re.fullmatch(re.escape(path) + r"/\{(\w+)\}(/[^{}]*)?", other)
            if match is None:
                continue
            parameters = {name: f"$request.path.{name}" for name in own}
            parameters[match.group(1)] = "$response.body#/id"
            for op in other_item.values():
                if not isinstance(op, dict) or "operationId" not in op:
                    continue
                name = "".join(part.title() for part in op["operationId"].split("_"))
                links[name] = {"operationId": op["operationId"], "parameters": dict(parameters)}
        if links:
            ok["links"] = dict(sorted(links.items()))


# 405 ----------------------------------------------------------------------------------------------


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route answers at ``path`` (Starlette's own 405 names only the first route's)."""
    methods: set[str] = set()
    for context in routing.iter_route_contexts(app.routes):
        regex = getattr(context, "path_regex", None)
        if regex is not None and context.methods and regex.match(path):
            methods.update(context.methods)
    return sorted(methods)


def install_contract(app: FastAPI) -> None:
    """The document built by ``build_openapi`` (once), and 405 answers with a true ``Allow``."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        allow = allowed_methods(app, request.url.path)
        detail = f"{request.method} is not allowed here; allowed: {', '.join(allow)}"
        resp = problem(405, "Method not allowed", detail, instance=request.url.path)
        resp.headers["Allow"] = ", ".join(allow)
        return resp

    app.add_exception_handler(405, method_not_allowed)


# The committed document (docs/openapi.json) ------------------------------------------------------

DOCUMENT = Path(__file__).resolve().parents[3] / "docs" / "openapi.json"
REGENERATE = ".venv/bin/python -m rpa_api.openapi --write"


def live_document() -> str:
    """The API's OpenAPI document as the app serves it, in the committed file's form."""
    from rpa_api.app import create_app
    from rpa_common.settings import Settings

    app = create_app(Settings(environment="test"))
    return json.dumps(app.openapi(), indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rpa_api.openapi",
        description="Print the API's OpenAPI document, or --write it to docs/openapi.json (CI compares them).",
    )
    parser.add_argument("--write", action="store_true", help=f"write {DOCUMENT.name} instead of printing it")
    args = parser.parse_args(argv)
    text = live_document()
    if args.write:
        DOCUMENT.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
