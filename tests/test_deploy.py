"""The deployment files are valid for the tools that read them."""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, cast

import jsonschema
import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.mark.parametrize("cfg", sorted(glob.glob(os.path.join(ROOT, "deploy", "haproxy", "*.cfg"))))
def test_haproxy_configs_are_valid(cfg: str) -> None:
    if shutil.which("haproxy") is None:
        if IN_CI:
            pytest.fail("haproxy is not installed (.ci/run installs it)")
        pytest.skip("!!! haproxy not installed: HAProxy configs NOT checked (apt-get install haproxy) !!!")
    out = subprocess.run(["haproxy", "-c", "-f", cfg], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr


# --- Compose files -----------------------------------------------------------------------------

COMPOSE_FILES = sorted(glob.glob(os.path.join(ROOT, "deploy", "compose", "*.yml")))
# The Compose specification's JSON schema, as shipped inside the docker-compose 1.29.2 wheel on
# PyPI (compose/config/compose_spec.json). Fetched once into .cache/ (no Docker engine here).
COMPOSE_WHEEL = "docker-compose==1.29.2"
COMPOSE_SCHEMA_MEMBER = "compose/config/compose_spec.json"
# Images not built here: pinned upstream releases, and what their environment may hold.
UPSTREAM_IMAGES = {
    "mariadb:11.4": ("MARIADB_", "GALERA_BOOTSTRAP"),
    "postgres:16": ("POSTGRES_",),
    "nats:2.10": ("NATS_PASSWORD_",),  # the per-service passwords deploy/nats/nats.conf reads
    "haproxy:2.8": (),
    "prom/prometheus:v2.53.0": (),
    "grafana/grafana:11.1.0": ("GF_",),
}
SERVICE_PORTS = {
    "rpa_api": "RPA_API_PORT",
    "rpa_gateway": "RPA_GATEWAY_PORT",
    "rpa_scheduler": "RPA_SCHEDULER_PORT",
    "rpa_coordinator": "RPA_COORDINATOR_PORT",
}


def _fetch_compose_wheel(cache: Path) -> Path:
    """The docker-compose wheel from PyPI, checked against the sha256 PyPI publishes for it."""
    name, _, version = COMPOSE_WHEEL.partition("==")
    index = urllib.request.Request(
        f"https://pypi.org/simple/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(index, timeout=60) as resp:  # noqa: S310 - a fixed https URL
        files = json.load(resp)["files"]
    wanted = f"{name.replace('-', '_')}-{version}-"
    [wheel] = [f for f in files if f["filename"].startswith(wanted) and f["filename"].endswith(".whl")]
    if not wheel["url"].startswith("https://"):
        raise OSError(f"unexpected download URL {wheel['url']}")
    with urllib.request.urlopen(wheel["url"], timeout=120) as resp:  # noqa: S310 - checked: https
        data = resp.read()
    if hashlib.sha256(data).hexdigest() != wheel["hashes"]["sha256"]:
        raise OSError(f"{wheel['filename']}: sha256 does not match PyPI's")
    path = cache / wheel["filename"]
    path.write_bytes(data)
    return path


def _compose_schema() -> dict[str, Any]:
    cache = Path(ROOT, ".cache", "compose-spec")
    target = cache / "compose_spec.json"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        try:
            wheel = _fetch_compose_wheel(cache)
        except (OSError, ValueError) as exc:
            msg = f"could not fetch {COMPOSE_WHEEL} from PyPI for the Compose schema: {exc}"
            if IN_CI:
                pytest.fail(msg)
            pytest.skip(f"!!! {msg}: compose files NOT validated !!!")
        with zipfile.ZipFile(wheel) as whl:
            target.write_bytes(whl.read(COMPOSE_SCHEMA_MEMBER))
        wheel.unlink()
    return cast(dict[str, Any], json.loads(target.read_text()))


def _load(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return cast(dict[str, Any], yaml.safe_load(f))


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _dockerfile_stages(path: Path) -> set[str]:
    return set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", path.read_text(), re.M | re.I))


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=os.path.basename)
def test_compose_file_follows_the_compose_specification(path: str) -> None:
    schema = _compose_schema()
    doc = {k: v for k, v in _load(path).items() if not k.startswith("x-")}
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=os.path.basename)
def test_compose_file_names_only_what_exists(path: str) -> None:
    from rpa_common.settings import Settings

    doc = _load(path)
    services: dict[str, dict[str, Any]] = doc["services"]
    here = Path(path).parent
    settings_vars = {f"RPA_{name.upper()}" for name in Settings.model_fields}
    documented = set(re.findall(r"^([A-Z_]+)=", Path(here, "example.env").read_text(), re.M))
    problems: list[str] = []
    for name, svc in services.items():
        image = svc.get("image", "")
        env = _env(svc)
        if "build" in svc:
            build = svc["build"]
            dockerfile = Path(here, build["context"], build["dockerfile"]).resolve()
            if not dockerfile.is_file():
                problems.append(f"{name}: Dockerfile {dockerfile} is missing")
            elif build.get("target") and build["target"] not in _dockerfile_stages(dockerfile):
                problems.append(f"{name}: Dockerfile has no stage {build['target']!r}")
            allowed: tuple[str, ...] = ()
        elif image in UPSTREAM_IMAGES:
            allowed = UPSTREAM_IMAGES[image]
        else:
            problems.append(f"{name}: image {image!r} is neither built here nor a pinned upstream image")
            allowed = ()
        for var in env:
            if var.startswith("RPA_"):
                if var not in settings_vars:
                    problems.append(f"{name}: {var} is not a setting (libs/common/rpa_common/settings.py)")
            elif not var.startswith(allowed) or not allowed:
                problems.append(f"{name}: variable {var} means nothing to image {image or 'built here'}")
        for var in re.findall(r"\$\{([A-Z_]+)", json.dumps(svc)):
            if var not in documented:
                problems.append(f"{name}: ${{{var}}} is not in deploy/compose/example.env")
        for dep in svc.get("depends_on") or []:
            if dep not in services:
                problems.append(f"{name}: depends_on {dep!r}, which is not a service")
        mode = svc.get("network_mode", "")
        if mode.startswith("service:") and mode.split(":", 1)[1] not in services:
            problems.append(f"{name}: network_mode {mode!r} names no service")
        for volume in svc.get("volumes") or []:
            source = str(volume).split(":", 1)[0]
            if source.startswith("."):
                if not Path(here, source).exists():
                    problems.append(f"{name}: mounts {source}, which does not exist")
            elif source not in (doc.get("volumes") or {}):
                problems.append(f"{name}: volume {source!r} is not declared")
        command = svc.get("command") or []
        if isinstance(command, list) and command[:2] == ["python", "-m"]:
            module = command[2]
            if importlib.util.find_spec(module) is None:
                problems.append(f"{name}: python -m {module}: no such module in the project")
            port_var = SERVICE_PORTS.get(module)
            if port_var:
                port = env.get(port_var)
                probe = json.dumps(svc.get("healthcheck", {}).get("test", []))
                if port is None or f"127.0.0.1:{port}/" not in probe:
                    problems.append(f"{name}: its health check does not ask its own port ({port_var}={port})")
        if image.startswith("haproxy:"):
            problems += _haproxy_names(name, svc, services, here)
    db_hosts = {_env(s).get("RPA_DB_HOST") for s in services.values() if "RPA_DB_HOST" in _env(s)}
    for host in db_hosts:
        if host not in services:
            problems.append(f"RPA_DB_HOST {host!r} is not a service")
    assert not problems, "\n".join(problems)


def _haproxy_names(name: str, svc: dict[str, Any], services: dict[str, Any], here: Path) -> list[str]:
    """The servers an HAProxy config names are services of this file, on the ports they listen on."""
    problems = []
    [cfg_mount] = [v for v in svc.get("volumes", []) if str(v).endswith("haproxy.cfg:ro")]
    cfg = Path(here, cfg_mount.split(":", 1)[0]).read_text()
    for server, host, port in re.findall(r"^\s*server\s+(\S+)\s+([\w.-]+):(\d+)", cfg, re.M):
        target = services.get(host)
        if target is None:
            problems.append(f"{name}: server {server} -> {host}, which is not a service")
            continue
        listens = {v for k, v in _env(target).items() if k in SERVICE_PORTS.values()}
        image = target.get("image", "")
        listens |= {"3306"} if image.startswith("mariadb") else set()
        listens |= {"5432"} if image.startswith("postgres") else set()
        if port not in listens:
            problems.append(
                f"{name}: server {server} -> {host}:{port}, but {host} listens on {sorted(listens)}"
            )
    binds = set(re.findall(r"^\s*bind\s+\S*:(\d+)", cfg, re.M))
    for mapping in svc.get("ports", []):
        container_port = str(mapping).rsplit(":", 1)[-1]
        if container_port not in binds:
            problems.append(f"{name}: publishes {container_port}, where its config binds nothing")
    return problems


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=os.path.basename)
def test_compose_monitoring_scrapes_every_service_and_provisions_grafana(path: str) -> None:
    """Prometheus scrapes each service of the file on the port it listens on; Grafana's dashboard
    provider reads where the dashboards are mounted, and the dashboards use the provisioned
    datasource."""
    doc = _load(path)
    services: dict[str, dict[str, Any]] = doc["services"]
    here = Path(path).parent
    mounts = {
        target.split(":", 1)[0]: Path(here, source)
        for svc in (services["prometheus"], services["grafana"])
        for source, target in (str(v).split(":", 1) for v in svc["volumes"])
        if source.startswith(".")
    }
    config = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    scraped = {
        target
        for job in config["scrape_configs"]
        for group in job["static_configs"]
        for target in group["targets"]
    }
    wanted = set()
    for name, svc in services.items():
        command = svc.get("command") or []
        if isinstance(command, list) and command[:2] == ["python", "-m"] and command[2] in SERVICE_PORTS:
            wanted.add(f"{name}:{_env(svc)[SERVICE_PORTS[command[2]]]}")
    assert scraped == wanted
    assert set(services["prometheus"]["depends_on"]) == {t.split(":")[0] for t in wanted}

    provisioning = mounts["/etc/grafana/provisioning"]
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    [source] = datasources["datasources"]
    assert source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards" / "rpa.yml").read_text())["providers"]
    assert [p["options"]["path"] for p in providers] == ["/var/lib/grafana/dashboards"]
    dashboards = sorted(mounts["/var/lib/grafana/dashboards"].glob("*.json"))
    assert dashboards
    home = _env(services["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).name in {d.name for d in dashboards}
    for dashboard in dashboards:
        panels = json.loads(dashboard.read_text())["panels"]
        uids = {p["datasource"]["uid"] for p in panels if "datasource" in p}
        uids |= {t["datasource"]["uid"] for p in panels for t in p.get("targets", [])}
        assert uids == {source["uid"]}, dashboard.name


def test_failover_layout_keeps_its_two_rules() -> None:
    """RPA_DB_HOST is the balancer, and nothing waits on a database container to start."""
    doc = _load(os.path.join(ROOT, "deploy", "compose", "failover.yml"))
    services = doc["services"]
    databases = {
        n for n, s in services.items() if str(s.get("image", "")).startswith(("mariadb", "postgres"))
    }
    assert len(databases) == 2 and "garbd" in services
    balancer = services["dbproxy"]
    assert "haproxy-galera.cfg" in json.dumps(balancer["volumes"])
    for name, svc in services.items():
        env = _env(svc)
        if "RPA_DB_HOST" in env:
            assert env["RPA_DB_HOST"] == "dbproxy", name
        assert not set(svc.get("depends_on") or []) & databases, f"{name} depends on a database container"
    for kind in ("api", "gateway", "scheduler"):
        assert {f"{kind}-1", f"{kind}-2"} <= set(services), kind
    nats = [n for n in services if n.startswith("nats")]
    assert len(nats) == 3
    for n in nats:
        assert "--routes" in services[n]["command"]


# --- Kubernetes manifests ----------------------------------------------------------------------
# No cluster runs here: the manifests are checked against the Kubernetes API schemas
# (kubernetes-validate, strict: unknown fields are errors) and against the project's own names.
# kustomize is not installed either: the overlay's patches are applied here as strategic merges of
# the kinds used (maps merge, lists of named items merge by name, null deletes).

K8S = Path(ROOT, "deploy", "kubernetes")
K8S_VERSIONS = ("1.30.0", "1.37.0")  # the oldest still supported upstream, and the newest known


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kustomize(folder: Path) -> list[dict[str, Any]]:
    kust = _load(str(folder / "kustomization.yaml"))
    docs: list[dict[str, Any]] = []
    for res in kust.get("resources", []):
        target = (folder / res).resolve()
        assert target.exists(), f"{folder}: resource {res} does not exist"
        docs += _kustomize(target) if target.is_dir() else _docs(target)
    for patch in kust.get("patches", []):
        patch_path = folder / patch["path"]
        assert patch_path.exists(), f"{folder}: patch {patch['path']} does not exist"
        for change in _docs(patch_path):
            key = (change["kind"], change["metadata"]["name"])
            matches = [d for d in docs if (d["kind"], d["metadata"]["name"]) == key]
            assert matches, f"{patch_path.name}: patches {key}, which the base does not have"
            _merge(matches[0], change)
    for doc in docs:
        labels = {k: v for item in kust.get("labels", []) for k, v in item["pairs"].items()}
        doc["metadata"].setdefault("labels", {}).update(labels)
    return docs


def _merge(into: dict[str, Any], change: dict[str, Any]) -> None:
    for key, value in change.items():
        if value is None:
            into.pop(key, None)
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        elif (
            isinstance(value, list)
            and isinstance(into.get(key), list)
            and all(isinstance(v, dict) and "name" in v for v in value + into[key])
        ):
            by_name = {item["name"]: item for item in into[key]}
            for item in value:
                if item["name"] in by_name:
                    _merge(by_name[item["name"]], item)
                else:
                    into[key].append(item)
        else:
            into[key] = value


@pytest.mark.parametrize("layout", ["base", "overlays/failover"])
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_follow_the_api_schemas(layout: str, version: str) -> None:
    import kubernetes_validate

    problems = []
    for doc in _kustomize(K8S / layout):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("layout", ["base", "overlays/failover"])
def test_kubernetes_manifests_name_only_what_exists(layout: str) -> None:
    from rpa_common.settings import Settings

    docs = _kustomize(K8S / layout)
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    settings_vars = {f"RPA_{name.upper()}" for name in Settings.model_fields}
    kust = _load(str(K8S / "base" / "kustomization.yaml"))
    images = {i["name"] for i in kust.get("images", [])}
    readme = Path(ROOT, "README.md").read_text()
    problems: list[str] = []
    for key in by_kind["ConfigMap"]["rpa-config"]["data"]:
        if key not in settings_vars:
            problems.append(f"ConfigMap rpa-config: {key} is not a setting")
    workloads = {**by_kind.get("Deployment", {}), **by_kind.get("Job", {})}
    template_labels = {}
    for name, work in workloads.items():
        spec = work["spec"]
        pod = spec["template"]
        template_labels[name] = pod["metadata"]["labels"]
        selector = spec.get("selector", {}).get("matchLabels")
        if selector and not selector.items() <= pod["metadata"]["labels"].items():
            problems.append(f"{name}: its selector does not match its pods")
        for container in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]:
            where = f"{name}/{container['name']}"
            if container["image"] not in images:
                problems.append(f"{where}: image {container['image']} is not the kustomization's image")
            command = container.get("command", [])
            if command[:2] == ["python", "-m"] and importlib.util.find_spec(command[2]) is None:
                problems.append(f"{where}: python -m {command[2]}: no such module")
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            for var in env:
                if var not in settings_vars:
                    problems.append(f"{where}: {var} is not a setting")
            for source in container.get("envFrom", []):
                if "configMapRef" in source and source["configMapRef"]["name"] not in by_kind["ConfigMap"]:
                    problems.append(f"{where}: ConfigMap {source['configMapRef']['name']} is not defined")
                if "secretRef" in source and f"`{source['secretRef']['name']}`" not in readme:
                    problems.append(
                        f"{where}: Secret {source['secretRef']['name']} is not explained in README"
                    )
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            module = command[2] if command[:2] == ["python", "-m"] else ""
            if module in SERVICE_PORTS:
                if str(next(iter(ports.values()), "")) != env.get(SERVICE_PORTS[module]):
                    problems.append(f"{where}: containerPort differs from {SERVICE_PORTS[module]}")
                probe = container.get("readinessProbe", {}).get("httpGet", {})
                if probe.get("path") != "/readyz" or probe.get("port") not in ports:
                    problems.append(f"{where}: readiness must ask /readyz on its own port")
    for name, svc in by_kind.get("Service", {}).items():
        if svc["spec"].get("type") == "ExternalName":
            continue
        owners = [
            w for w, labels in template_labels.items() if svc["spec"]["selector"].items() <= labels.items()
        ]
        if not owners:
            problems.append(f"Service {name}: selects no pods")
    for name, pdb in by_kind.get("PodDisruptionBudget", {}).items():
        selected = pdb["spec"]["selector"]["matchLabels"].items()
        if not any(selected <= labels.items() for labels in template_labels.values()):
            problems.append(f"PodDisruptionBudget {name}: selects no pods")
    for name, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
        if hpa["spec"]["scaleTargetRef"]["name"] not in by_kind.get("Deployment", {}):
            problems.append(f"HorizontalPodAutoscaler {name}: scales no Deployment")
    for service in ("rpa-db", "rpa-nats"):
        if by_kind["Service"].get(service, {}).get("spec", {}).get("type") != "ExternalName":
            problems.append(f"{service} must be an external service addressed by name")
    if by_kind["ConfigMap"]["rpa-config"]["data"]["RPA_DB_HOST"] != "rpa-db":
        problems.append("RPA_DB_HOST must be the rpa-db service (the database balancer)")
    assert not problems, "\n".join(problems)


def test_failover_overlay_runs_replicas_that_survive_a_disruption() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _kustomize(K8S / "overlays" / "failover")}
    for name in ("rpa-api", "rpa-gateway", "rpa-scheduler"):
        assert docs[("Deployment", name)]["spec"]["replicas"] >= 2, name
        assert docs[("PodDisruptionBudget", name)]["spec"] == {
            "minAvailable": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
        }
    for name in ("rpa-api", "rpa-gateway"):
        assert docs[("HorizontalPodAutoscaler", name)]["spec"]["minReplicas"] >= 2
    gateway = docs[("Deployment", "rpa-gateway")]["spec"]["template"]["spec"]
    assert gateway["terminationGracePeriodSeconds"] >= 30  # time for robots to move
    assert len(docs[("ConfigMap", "rpa-config")]["data"]["RPA_NATS_URL"].split(",")) == 3


# Screenshots' bytes: the services that store, serve and delete them must see the same blobs.
_BLOB_USERS = ("rpa_api", "rpa_gateway", "rpa_scheduler")


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=os.path.basename)
def test_compose_services_share_the_blob_directory(path: str) -> None:
    doc = _load(path)
    mounts: dict[str, set[str]] = {}
    for name, svc in doc["services"].items():
        command = svc.get("command") or []
        if command[:2] == ["python", "-m"] and command[2] in _BLOB_USERS:
            blob_dir = (svc.get("environment") or {}).get("RPA_BLOB_DIR")
            assert blob_dir, f"{name}: RPA_BLOB_DIR is not set"
            volumes = {
                str(v).split(":")[0] for v in svc.get("volumes") or [] if str(v).split(":")[1] == blob_dir
            }
            assert volumes, f"{name}: nothing is mounted at its blob directory {blob_dir}"
            mounts[name] = volumes
    assert len(mounts) >= 3 and len({frozenset(v) for v in mounts.values()}) == 1, mounts


@pytest.mark.parametrize("layout", ["base", "overlays/failover"])
def test_kubernetes_services_share_the_blob_directory(layout: str) -> None:
    docs = _kustomize(K8S / layout)
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "rpa-config")
    blob_dir = config["data"]["RPA_BLOB_DIR"]
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    seen = set()
    for doc in docs:
        if doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        for container in pod["containers"]:
            if container.get("command", [])[2:3] and container["command"][2] in _BLOB_USERS:
                [mount] = [m for m in container.get("volumeMounts", []) if m["mountPath"] == blob_dir]
                [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert "ReadWriteMany" in claims[claim]["spec"]["accessModes"]  # every node, every replica
                assert pod["securityContext"].get("fsGroup") == pod["securityContext"]["runAsUser"]
                seen.add((container["command"][2], claim))
    assert {module for module, _ in seen} == set(_BLOB_USERS) and len({c for _, c in seen}) == 1, seen


# Each long-running service on Kubernetes is its own NATS user, as in compose: the user named after
# its module, its password a file holding only its key of the Secret rpa-nats, and the NATS
# configuration (with the authorization block) the very files of deploy/nats/.
K8S_NATS_USERS = {"rpa_api": "api", "rpa_gateway": "gateway", "rpa_scheduler": "scheduler"}


@pytest.mark.parametrize("layout", ["base", "overlays/failover"])
def test_kubernetes_services_each_use_their_own_nats_user(layout: str) -> None:
    from rpa_common.nats.permissions import PERMISSIONS

    docs = _kustomize(K8S / layout)
    seen: dict[str, str] = {}
    problems: list[str] = []
    for work in (d for d in docs if d["kind"] == "Deployment"):
        pod = work["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            module = container["command"][2]
            where = f"{work['metadata']['name']}/{container['name']}"
            if module not in K8S_NATS_USERS:
                continue
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            user = env.get("RPA_NATS_USER")
            if user != K8S_NATS_USERS[module] or user not in PERMISSIONS:
                problems.append(f"{where}: RPA_NATS_USER is {user!r}, not {K8S_NATS_USERS[module]!r}")
                continue
            seen[module] = user
            if "RPA_NATS_PASSWORD" in env:
                problems.append(f"{where}: the NATS password must be a file, not a variable")
            path = Path(env.get("RPA_NATS_PASSWORD_FILE") or "/nowhere")
            mounts = [m for m in container.get("volumeMounts", []) if m["mountPath"] == str(path.parent)]
            if not mounts or not mounts[0].get("readOnly"):
                problems.append(f"{where}: {path.parent} is not a read-only mount")
                continue
            secret = volumes[mounts[0]["name"]].get("secret", {})
            if secret.get("secretName") != "rpa-nats":
                problems.append(f"{where}: the password is not from the Secret rpa-nats")
            if secret.get("items") != [{"key": user, "path": path.name}]:
                problems.append(f"{where}: it must mount its own key {user!r} of rpa-nats only")
            if secret.get("defaultMode", 0o644) & 0o007:
                problems.append(f"{where}: the password file must not be readable by others")
    assert seen == K8S_NATS_USERS, seen
    assert not problems, "\n".join(problems)
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "rpa-nats-config")
    for name in ("nats.conf", "auth.conf"):
        assert config["data"][name] == Path(ROOT, "deploy", "nats", name).read_text(), name
    assert "include auth.conf" in config["data"]["nats.conf"]
    for user in PERMISSIONS:
        assert f"{{user: {user}, password: $NATS_PASSWORD_{user.upper()}," in config["data"]["auth.conf"]
    assert "`rpa-nats`" in Path(ROOT, "README.md").read_text()
