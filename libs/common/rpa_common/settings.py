"""Settings shared by every service, read from the environment with the prefix ``RPA_``.

The database is given either as one URL (``RPA_DB_URL``) or as parts (``RPA_DB_DRIVER`` ...): a
failover deployment points ``RPA_DB_HOST`` at the database load balancer.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal
from urllib.parse import quote_plus

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET = "dev-insecure-secret-key-change-me-please"  # noqa: S105 - the refused-in-production default


class Settings(BaseSettings):
    """One documented field per value; nested per service by field prefix."""

    model_config = SettingsConfigDict(env_prefix="RPA_", env_file=None, extra="ignore")

    environment: Literal["development", "test", "production"] = Field(
        "development", description="Outside development, default secrets are refused."
    )
    log_level: str = Field("INFO", description="Root log level.")
    log_json: bool = Field(True, description="Log as JSON lines (false: human-readable console).")

    # Metrics
    metrics_token: SecretStr | None = Field(
        None,
        description=(
            "If set, /metrics of every service answers only 'Authorization: Bearer <this token>' "
            "(else 401). Unset: /metrics is open, like /healthz; keep it off public networks."
        ),
    )
    metrics_sample_interval_s: float = Field(
        5.0,
        gt=0,
        description="The scheduler counts jobs by state, robots by status and task backlogs this often (rpa_jobs, rpa_robots, rpa_task_backlog).",
    )

    # Database
    db_url: str | None = Field(None, description="Full SQLAlchemy URL; wins over the parts below.")
    db_driver: Literal["postgresql", "mariadb"] = Field("postgresql", description="Database kind.")
    db_host: str = Field("127.0.0.1", description="Database host (or its load balancer).")
    db_port: int | None = Field(None, description="Database port (default 5432 / 3306).")
    db_user: str | None = Field(None, description="Database user (default postgres / root).")
    db_password: SecretStr = Field(SecretStr(""), description="Database password.")
    db_name: str = Field("rpa", description="Database name.")
    db_pool_size: int = Field(10, description="Connections kept per process.")
    db_max_overflow: int = Field(20, description="Extra connections allowed under load.")
    db_pool_timeout_s: float = Field(10.0, description="Seconds to wait for a pooled connection.")
    db_connect_timeout_s: float = Field(5.0, description="Seconds to wait for a new connection.")
    db_retry_attempts: int = Field(5, description="Re-runs of a transaction after connection loss/deadlock.")
    db_admin_user: str | None = Field(
        None,
        description="`dbsetup` only: an account that may create the database and users (root / postgres).",
    )
    db_admin_password: SecretStr = Field(SecretStr(""), description="`dbsetup` only: its password.")
    dbcheck_user: str = Field("rpa_check", description="Galera health agent's account (no privileges).")
    dbcheck_password: SecretStr = Field(SecretStr(""), description="Galera health agent's password.")

    # NATS
    nats_url: str = Field("nats://127.0.0.1:4222", description="NATS server URL(s), comma separated.")
    nats_user: str | None = Field(
        None,
        description="This service's NATS user (`api`, `scheduler`, `gateway`, `coordinator`), when NATS "
        "runs with per-service users and subject permissions (deploy/nats/, `rpa_common.nats.permissions`).",
    )
    nats_password: SecretStr = Field(SecretStr(""), description="That user's NATS password.")
    nats_password_file: str | None = Field(
        None, description="A file holding that password (a container secret), instead of `RPA_NATS_PASSWORD`."
    )
    ready_grace_s: float = Field(
        30.0,
        ge=0,
        description="A database or NATS that answered before and stops answering keeps /readyz at 200 "
        "('degraded') this long: a fail-over of what every replica shares must not take them all out of "
        "their balancer. 0: not ready at once.",
    )

    # Security
    secret_key: SecretStr = Field(SecretStr(DEV_SECRET), description="Signs access tokens (HS256).")
    encryption_keys: SecretStr = Field(
        SecretStr(""),
        description=(
            "Comma-separated 'id:base64-32-byte-key' list for secrets at rest; the first encrypts, "
            "all decrypt (rotation). Empty in development: derived from RPA_SECRET_KEY."
        ),
    )
    credentials_master_keys: SecretStr = Field(
        SecretStr(""),
        description=(
            "Comma-separated 'id:base64-32-byte-key' master keys of credential resources; the first "
            "wraps new data keys, all unwrap (rotation). Empty outside production: one key 'dev' "
            "derived from RPA_SECRET_KEY; production refuses to start without a key."
        ),
    )
    credentials_master_keys_file: str | None = Field(
        None,
        description="A file holding the master keys instead (same list, comma- or line-separated).",
    )
    access_token_ttl_s: int = Field(900, description="Access token lifetime.")
    refresh_token_ttl_s: int = Field(14 * 24 * 3600, description="Refresh token lifetime.")
    login_max_failures: int = Field(5, description="Failures per user+address before slowing down.")
    login_lockout_s: int = Field(30, description="Base delay after too many failures (doubles).")
    client_token_ttl_s: int = Field(
        3600, ge=60, description="Lifetime of an external application's access token (client credentials)."
    )
    rate_limit_per_minute: int = Field(
        600, ge=0, description="API calls per minute per API key, user or external app (0: no limit)."
    )
    rate_limit_anonymous_per_minute: int = Field(
        120, ge=0, description="API calls per minute per client address without credentials (0: no limit)."
    )

    # API
    api_host: str = Field("127.0.0.1", description="API bind address.")
    api_port: int = Field(8000, description="API port.")
    api_workers: int | None = Field(
        None, ge=1, description="API worker processes (uvicorn); default: one per CPU core."
    )
    db_request_deadline_s: float = Field(
        5.0,
        gt=0,
        description="An API request waits at most this long for the database, re-runs included, then answers 503.",
    )
    max_package_bytes: int = Field(64 * 1024 * 1024, description="Largest process package accepted (413).")
    max_json_bytes: int = Field(1024 * 1024, description="Largest JSON request body accepted (413).")
    admin_password: SecretStr | None = Field(None, description="Password of the first `admin` user.")

    # Gateway
    license_required: bool = Field(
        False,
        description="Enforce licenses: a robot without a free, unexpired seat of its kind is Unlicensed "
        "and gets no work. Off: every robot may work (development and community use).",
    )
    license_public_keys: str = Field(
        "",
        description="Issuer public keys that license keys must be signed with: comma-separated base64 "
        "of the raw Ed25519 key (python -m rpa_common.licensing keypair prints one).",
    )
    gateway_host: str = Field("127.0.0.1", description="Robot gateway bind address.")
    gateway_port: int = Field(8001, description="Robot gateway port.")
    gateway_public_url: str | None = Field(None, description="URL robots are given to reach the gateway.")
    gateway_ws_compression: bool = Field(
        False,
        description="Accept permessage-deflate from robots. Off by default: zlib's state costs about "
        "49 KiB per connection, and robot frames are small JSON.",
    )
    heartbeat_interval_s: float = Field(15.0, description="Robots send a heartbeat this often.")
    heartbeat_misses: int = Field(3, description="Missed heartbeats before a robot is Disconnected.")
    job_lease_s: float = Field(60.0, description="A job whose robot is silent this long ends 'robot lost'.")
    gateway_batch_max: int = Field(
        256, ge=1, description="Robot frames the gateway applies in one transaction (group commit)."
    )
    gateway_batch_delay_ms: float = Field(
        2.0, ge=0, description="How long the gateway waits for more frames when a batch is not full."
    )
    gateway_writers: int = Field(
        2,
        ge=1,
        le=16,
        description="Batches of robot frames the gateway has in flight at once (each its own transaction).",
    )
    gateway_log_pending_max: int = Field(
        100_000,
        ge=1000,
        description=(
            "Robot log lines a gateway holds received but not yet committed; beyond it the gateway "
            "stops reading log frames (robots keep buffering) until commits make room."
        ),
    )
    gateway_log_batch_lines: int = Field(
        20_000, ge=1, description="Log lines the gateway stores in one transaction (COPY on PostgreSQL)."
    )
    gateway_reconcile_interval_s: float = Field(
        2.0, gt=0, description="Gateway compares its robots' jobs in the database with what it sent them."
    )
    gateway_watch_recheck_s: float = Field(
        30.0,
        gt=0,
        description=(
            "Gateway re-reads the resources its robots watch this often and pushes what changed "
            "(a lost ResourceChanged message delays a push by this much at most)."
        ),
    )

    # Queues and tasks
    task_lock_s: int = Field(
        300,
        ge=1,
        le=86400,
        description="How long a robot holds a task it took, unless it asks for another time; robots renew it.",
    )
    task_bulk_max: int = Field(
        1000, ge=1, description="Most tasks one call may add (API or robot); more is refused (413)."
    )
    task_csv_max_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest CSV file of tasks accepted in one upload (413)."
    )
    task_csv_max_rows: int = Field(
        100_000, ge=1, description="Most tasks one CSV upload may add; more is refused (413)."
    )

    # Scheduler
    scheduler_host: str = Field("127.0.0.1", description="Scheduler bind address.")
    scheduler_port: int = Field(8002, description="Scheduler port.")
    sweep_interval_s: float = Field(5.0, description="Period of the recovery sweep (dispatch, leases).")
    dispatch_confirm_timeout_s: float = Field(
        10.0,
        description=(
            "A Starting job not confirmed this long after it was offered (the robot did not report it "
            "running; the coordinator did not answer its OpenSession) is offered again."
        ),
    )
    dispatch_max_offers: int = Field(
        3,
        description=(
            "Offers of one attempt (the first included) before an unconfirmed Starting job is planned "
            "again: back to Pending, its robot released."
        ),
    )

    # Coordinator
    coordinator_host: str = Field("127.0.0.1", description="Coordinator bind address.")
    coordinator_port: int = Field(8003, description="Coordinator port.")
    coordinator_key: SecretStr | None = Field(None, description="Key of the coordinator robot.")
    coordinator_driver: Literal["process", "rdp"] = Field(
        "process",
        description="Session driver: `rdp` opens real RDP sessions with xfreerdp; `process` starts the "
        "robot as a local process of the account's OS user (no log-on).",
    )
    coordinator_max_sessions: int = Field(10, description="Concurrent sessions on this server.")
    session_connect_timeout_s: float = Field(60.0, description="A robot must connect this soon.")
    coordinator_require_key: bool = Field(
        True,
        description=(
            "Refuse to start without RPA_COORDINATOR_KEY. False: start anyway and only answer health "
            "checks (a node that has no terminal server to serve yet)."
        ),
    )
    coordinator_work_dir: str | None = Field(
        None, description="Where session directories (robot state, cache, output) go; default: the temp dir."
    )
    coordinator_seal_key: SecretStr | None = Field(
        None,
        description="The coordinator's X25519 private key (URL-safe base64, 32 bytes) for sealed "
        "session credentials; default: read from (or made in) RPA_COORDINATOR_SEAL_KEY_FILE.",
    )
    coordinator_seal_key_file: str | None = Field(
        None, description="File (mode 0600) holding the private key; default: <work dir>/seal.key."
    )
    coordinator_register_key: bool = Field(
        True, description="At start, register the public key on the terminal servers this coordinator serves."
    )
    coordinator_state_file: str | None = Field(
        None,
        description="Where the coordinator keeps its sessions' process ids (no secret) to find them "
        "after a restart; default: <work dir>/sessions-<coordinator robot id>.json.",
    )
    coordinator_keep_sessions_on_stop: bool = Field(
        False,
        description="On shutdown, leave open sessions running for the next start to adopt (an upgrade "
        "that must not end running jobs) instead of logging them off.",
    )
    coordinator_door: str | None = Field(
        None,
        description="Unix socket where robots started in RDP sessions take their key (rdp driver); "
        "default: /run/rpa-coordinator/robot.sock (as root), else <work dir>/robot.sock.",
    )
    coordinator_display: str | None = Field(
        None, description="X display for the RDP client (rdp driver); default: $DISPLAY."
    )
    coordinator_rdp_client: str = Field("xfreerdp", description="FreeRDP client program (rdp driver).")
    coordinator_robot_shell: str = Field(
        "rpa-robot run --unattended --exit-after-job",
        description="The robot's command in an RDP session when the terminal server names none "
        "(`--door <socket>` is appended; never a secret).",
    )
    session_logon_timeout_s: float = Field(
        30.0,
        gt=0,
        description="An RDP session whose robot has not taken its key this soon fails (wrong password, "
        "or the server did not start the robot).",
    )
    session_logoff_grace_s: float = Field(
        10.0,
        ge=0,
        description="After its job ended, a session whose robot did not log off by itself is logged off.",
    )

    def nats_credentials(self) -> tuple[str | None, str | None]:
        """(user, password) for NATS, the password read from its file when one is named."""
        if not self.nats_user:
            return None, None
        password = self.nats_password.get_secret_value()
        if self.nats_password_file:
            with open(self.nats_password_file, encoding="utf-8") as f:
                password = f.read().strip()
        return self.nats_user, password or None

    # Screenshots, blob store, retention
    blob_store: Literal["directory", "s3"] = Field(
        "directory",
        description="Where screenshots' bytes go: a directory (shared by API and gateway) or S3-compatible storage.",
    )
    blob_dir: str = Field(
        "blobs", description="Blob directory (blob_store=directory); API and gateway share it."
    )
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint URL (None: AWS S3).")
    s3_bucket: str | None = Field(None, description="S3 bucket for blobs (blob_store=s3).")
    s3_region: str = Field("us-east-1", description="S3 region.")
    s3_access_key_id: str | None = Field(None, description="S3 access key id (None: boto3's own lookup).")
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret access key (never logged).")
    screenshot_max_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest screenshot a robot may upload (413)."
    )
    retention_interval_s: float = Field(
        60.0, gt=0, description="Scheduler: period of the retention pass (robot messages, screenshots)."
    )
    retention_batch: int = Field(
        1000, ge=1, le=10000, description="Scheduler: rows removed per retention transaction."
    )
    statistics_rollup_interval_s: float = Field(
        60.0,
        ge=0,
        description="Scheduler: period of the statistics rollup pass (hourly job, queue and robot rollups); 0: no passes.",
    )
    statistics_rollup_margin_s: float = Field(
        120.0,
        ge=1,
        description="Scheduler: the rollups count changes older than this (longer than any transaction that writes jobs or history).",
    )
    statistics_rollup_max_hours: int = Field(
        168,
        ge=1,
        le=8784,
        description="Scheduler: hours a rollup pass aggregates per account and transaction.",
    )
    statistics_exact_durations_h: int = Field(
        48,
        ge=0,
        le=744,
        description="API: ranges up to this many hours get exact run-time percentiles; wider ones use the rollups' histograms.",
    )
    webhook_timeout_s: float = Field(
        10.0, gt=0, description="Webhooks: time a receiver has to answer one delivery (and a test ping)."
    )
    webhook_connect_timeout_s: float = Field(
        5.0, gt=0, description="Webhooks: time to connect to a receiver."
    )
    webhook_poll_interval_s: float = Field(
        1.0, gt=0, description="Webhooks: how often the scheduler looks for due deliveries."
    )
    webhook_batch: int = Field(
        50, ge=1, le=1000, description="Webhooks: deliveries one worker claims at once."
    )
    webhook_retry_base_s: float = Field(
        5.0, gt=0, description="Webhooks: first retry delay; doubles per attempt, with jitter."
    )
    webhook_retry_max_s: float = Field(
        3600.0, gt=0, description="Webhooks: longest retry delay (also caps a receiver's Retry-After)."
    )
    webhook_pause_after_failures: int = Field(
        20, ge=1, description="Webhooks: consecutive failed attempts after which a subscription is paused."
    )
    webhook_pause_after_s: float = Field(
        86400.0, gt=0, description="Webhooks: a subscription failing (no success) this long is paused."
    )
    # Event stream (issue 13)
    events_retention_s: float = Field(
        86400.0, ge=60, description="How long the event stream (JetStream RPA_EVENTS) keeps events."
    )
    events_enabled: bool = Field(
        True,
        description="All services: record an event (outbox row) with each job, robot, task, trigger and session "
        "change. False turns the event stream and webhooks off (for measuring what they cost).",
    )
    events_relay_interval_s: float = Field(
        1.0, gt=0, description="Scheduler: period of the event outbox relay when nothing wakes it."
    )
    events_relay_batch: int = Field(
        500, ge=1, le=10000, description="Scheduler: outbox rows relayed per transaction."
    )
    events_ticket_ttl_s: float = Field(
        60.0, ge=5, le=600, description="API: lifetime of an event stream ticket (single use)."
    )
    events_heartbeat_s: float = Field(
        15.0, gt=0, description="API: period of the event stream's heartbeat comments."
    )
    cors_origins: str = Field(
        "",
        description="API: comma-separated origins allowed by CORS (e.g. https://rpa.example.com); none by default.",
    )
    cors_allow_credentials: bool = Field(False, description="API: CORS Access-Control-Allow-Credentials.")
    cors_max_age_s: int = Field(
        600, ge=0, description="API: CORS preflight cache lifetime (Access-Control-Max-Age)."
    )

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        if self.environment == "production" and self.secret_key.get_secret_value() == DEV_SECRET:
            raise ValueError("RPA_SECRET_KEY must be set outside development")
        if self.environment == "production" and len(self.secret_key.get_secret_value().encode()) < 32:
            raise ValueError("RPA_SECRET_KEY must be at least 32 bytes")
        if self.environment == "production" and not self.encryption_keys.get_secret_value():
            raise ValueError("RPA_ENCRYPTION_KEYS must be set outside development")
        if self.blob_store == "s3" and not self.s3_bucket:
            raise ValueError("RPA_S3_BUCKET must be set when RPA_BLOB_STORE=s3")
        return self

    @property
    def database_url(self) -> str:
        """The SQLAlchemy async URL, from ``db_url`` or from the parts."""
        if self.db_url:
            return normalize_db_url(self.db_url)
        password = quote_plus(self.db_password.get_secret_value())
        if self.db_driver == "postgresql":
            user = self.db_user or "postgres"
            port = self.db_port or 5432
            scheme = "postgresql+asyncpg"
        else:
            user = self.db_user or "root"
            port = self.db_port or 3306
            scheme = "mysql+aiomysql"
        auth = f"{quote_plus(user)}:{password}" if password else quote_plus(user)
        suffix = "?charset=utf8mb4" if self.db_driver == "mariadb" else ""
        return f"{scheme}://{auth}@{self.db_host}:{port}/{self.db_name}{suffix}"


def normalize_db_url(url: str) -> str:
    """Accept plain ``postgresql://`` / ``mariadb://`` / ``mysql://`` URLs and pick the async driver."""
    for prefix, scheme in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("mariadb://", "mysql+aiomysql://"),
        ("mysql://", "mysql+aiomysql://"),
        ("mariadb+aiomysql://", "mysql+aiomysql://"),
    ):
        if url.startswith(prefix):
            url = scheme + url[len(prefix) :]
            break
    if url.startswith("mysql+aiomysql://") and "charset=" not in url:
        url += ("&" if "?" in url else "?") + "charset=utf8mb4"
    return url


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (tests build their own ``Settings`` instead)."""
    return Settings()
