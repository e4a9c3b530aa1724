"""queues and tasks: fencing tokens, task history, the indexes of take-next, sweeps and statistics

``task.lock_token`` is the fencing token of a task's lock (one more at each take); ``task.progress``
the latest progress note; ``task_event`` the history of every task (created, state changes with who
and why, progress notes, retries, edits).

"Take next" reads ``(queue_id, state, priority DESC, created_at)``: descending index keys are honoured
by PostgreSQL and by MariaDB 10.8+ (older MariaDB parses and ignores DESC: still correct, a little
slower). The new indexes are made before the old ``ix_task_take`` goes, because MariaDB keeps an
index led by ``queue_id`` for the foreign key at all times.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 10:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from rpa_common.models import base as rt

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES: tuple[tuple[str, list[str]], ...] = (
    ("ix_task_queue_id_state_deadline", ["queue_id", "state", "deadline"]),
    ("ix_task_queue_id_state_created_at", ["queue_id", "state", "created_at"]),
    ("ix_task_queue_id_ended_at", ["queue_id", "ended_at"]),
    ("ix_task_state_delay_until", ["state", "delay_until"]),
    ("ix_task_state_lock_expires_at", ["state", "lock_expires_at"]),
)


def upgrade() -> None:
    op.add_column(
        "task", sa.Column("lock_token", sa.BigInteger(), server_default=sa.text("0"), nullable=False)
    )
    op.add_column("task", sa.Column("progress", sa.String(length=1000), nullable=True))
    for name, columns in _INDEXES:
        op.create_index(name, "task", columns, unique=False)
    op.create_index("ix_task_take_v2", "task", ["queue_id", "state", sa.text("priority DESC"), "created_at"])
    op.drop_index("ix_task_take", table_name="task")
    # Same name as before, so the models keep one name for it.
    op.create_index("ix_task_take", "task", ["queue_id", "state", sa.text("priority DESC"), "created_at"])
    op.drop_index("ix_task_take_v2", table_name="task")

    op.create_table(
        "task_event",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("at", rt.UTCDateTime(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("from_state", sa.String(length=24), nullable=True),
        sa.Column("to_state", sa.String(length=24), nullable=True),
        sa.Column("actor_type", sa.String(length=16), nullable=False),
        sa.Column("actor_id", sa.Uuid(), nullable=True),
        sa.Column("note", sa.String(length=1000), nullable=True),
        sa.Column("related_task_id", sa.Uuid(), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["account.id"], name=op.f("fk_task_event_account_id_account"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["task_id"], ["task.id"], name=op.f("fk_task_event_task_id_task"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_event")),
    )
    op.create_index(op.f("ix_task_event_account_id"), "task_event", ["account_id"], unique=False)
    op.create_index("ix_task_event_task_id_at", "task_event", ["task_id", "at"], unique=False)


def downgrade() -> None:
    # Its indexes go with it (MariaDB refuses to drop one that a foreign key uses).
    op.drop_table("task_event")
    op.create_index("ix_task_take_v1", "task", ["queue_id", "state", "priority", "created_at"])
    op.drop_index("ix_task_take", table_name="task")
    op.create_index("ix_task_take", "task", ["queue_id", "state", "priority", "created_at"])
    op.drop_index("ix_task_take_v1", table_name="task")
    for name, _ in reversed(_INDEXES):
        op.drop_index(name, table_name="task")
    op.drop_column("task", "progress")
    op.drop_column("task", "lock_token")
