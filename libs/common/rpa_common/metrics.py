"""Prometheus metrics every service exports on ``/metrics`` (``prometheus-client``).

The objects live here, in one registry per process, so that shared code (database retries, NATS
reconnects) and each service count into the same place, and so that the Grafana dashboard in
``deploy/grafana/`` and the test that checks it have one list of names to agree with.

Labels stay few and bounded: a service name, an HTTP route template (never a raw path), a state or
level name, a queue id. Never a robot id or a job id (one series per robot would grow without end).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

REGISTRY = CollectorRegistry(auto_describe=True)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Set (before ``prometheus_client`` is imported) in each worker of a service that runs several
worker processes on one port (the API): every process then writes its values to files there, and
``/metrics``, answered by any one worker, adds them all up (``render``)."""

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""The text format every Prometheus 2 and 3 reads (the metric names are plain, so 1.0.0 would say
the same)."""

_service = "unknown"


def set_service(name: str) -> None:
    """Name the service this process runs (the ``service`` label of shared code's metrics)."""
    global _service
    _service = name


def service_name() -> str:
    return _service


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def render() -> bytes:
    """The text exposition of this process's metrics, or of all worker processes' in
    multiprocess mode."""
    path = multiprocess_dir()
    if path is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    return generate_latest(registry)


def prepare_multiprocess_dir() -> tuple[str, bool]:
    """Before starting several worker processes: the directory their values go to, set in the
    environment they inherit, emptied (values of an earlier run must not add up with these), and
    whether it was made here (then the caller removes it at the end, ``remove_multiprocess_dir``)."""
    given = multiprocess_dir()
    if given is not None:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink()
        return given, False
    made = tempfile.mkdtemp(prefix="rpa-metrics-")
    os.environ[MULTIPROC_ENV] = made
    return made, True


def remove_multiprocess_dir(path: str) -> None:
    os.environ.pop(MULTIPROC_ENV, None)
    shutil.rmtree(path, ignore_errors=True)


def process_exiting() -> None:
    """A worker process ends: its live gauges leave the sum (its counters stay counted)."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(os.getpid())


_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# HTTP, every service ------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "rpa_http_requests",
    "HTTP requests answered, by service, method, route template and status code",
    ["service", "method", "route", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "rpa_http_request_duration_seconds",
    "Time to answer an HTTP request, by service, method and route template",
    ["service", "method", "route"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)

# Shared infrastructure ----------------------------------------------------------------------------
DB_RETRIES = Counter(
    "rpa_db_retries",
    "Database transactions retried, by service and reason (deadlock, serialization, unavailable...)",
    ["service", "reason"],
    registry=REGISTRY,
)
NATS_RECONNECTS = Counter(
    "rpa_nats_reconnects",
    "Reconnections of this process to NATS",
    ["service"],
    registry=REGISTRY,
)
NATS_DISCONNECTS = Counter(
    "rpa_nats_disconnects",
    "Connections of this process to NATS lost",
    ["service"],
    registry=REGISTRY,
)

# Robot gateway ------------------------------------------------------------------------------------
ROBOTS_CONNECTED = Gauge(
    "rpa_gateway_robots_connected",
    "Robots connected to this gateway replica",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
FRAMES_RECEIVED = Counter(
    "rpa_gateway_frames",
    "Frames received from robots, by frame type",
    ["type"],
    registry=REGISTRY,
)
LOG_LINES_INGESTED = Counter(
    "rpa_log_lines_ingested",
    "Robot log lines committed to the database, by level",
    ["level"],
    registry=REGISTRY,
)
LOG_BACKLOG = Gauge(
    "rpa_log_backlog_lines",
    "Robot log lines received by this gateway and not yet committed",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
LOG_COMMIT_LATENCY = Histogram(
    "rpa_log_commit_duration_seconds",
    "Time to commit one batch of robot log lines",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
SCREENSHOTS_STORED = Counter(
    "rpa_screenshots_stored",
    "Screenshots stored",
    registry=REGISTRY,
)

# Scheduler ----------------------------------------------------------------------------------------
DISPATCH_LATENCY = Histogram(
    "rpa_dispatch_latency_seconds",
    "Time from a job becoming Pending to its assignment to a robot",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    registry=REGISTRY,
)
JOBS_DISPATCHED = Counter(
    "rpa_jobs_dispatched",
    "Jobs assigned to a robot by this scheduler replica",
    registry=REGISTRY,
)
TRIGGER_FIRES = Counter(
    "rpa_trigger_fires",
    "Trigger occurrences that created a job, by trigger kind",
    ["kind"],
    registry=REGISTRY,
)
JOBS_FINISHED = Counter(
    "rpa_jobs_finished",
    "Jobs that reached a final state, by state, as this scheduler replica heard of them (JOB_STATE "
    "messages are shared among replicas: sum over replicas)",
    ["state"],
    registry=REGISTRY,
)
RETENTION_DELETED = Counter(
    "rpa_retention_deleted",
    "Rows removed by retention, by kind (log, screenshot)",
    ["kind"],
    registry=REGISTRY,
)

# Sampled from the database (one replica's view, refreshed every few seconds) ----------------------
JOBS_BY_STATE = Gauge(
    "rpa_jobs",
    "Jobs waiting or running, by state (all accounts; sampled by the scheduler)",
    ["state"],
    multiprocess_mode="mostrecent",
    registry=REGISTRY,
)
ROBOTS_BY_STATUS = Gauge(
    "rpa_robots",
    "Robots by status (all accounts)",
    ["status"],
    multiprocess_mode="mostrecent",
    registry=REGISTRY,
)
TASK_BACKLOG = Gauge(
    "rpa_task_backlog",
    "Tasks waiting to be taken (Created, not postponed) per queue",
    ["queue"],
    multiprocess_mode="mostrecent",
    registry=REGISTRY,
)
