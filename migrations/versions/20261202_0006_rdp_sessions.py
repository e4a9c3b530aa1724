"""coordinator RDP sessions: sealed credentials, session life

Terminal servers get what the ``rdp`` session driver needs (RDP port, pinned certificate or an
explicit opt-out, how the robot starts, the coordinator's public key for sealed credentials); the
session states are renamed to the RDP session's life (connecting, logged on, logging off, ended).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 10:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (old, new) session state values.
_RENAMED = (("opening", "connecting"), ("open", "logged_on"), ("closed", "ended"))


def _rename_states(pairs: Sequence[tuple[str, str]]) -> None:
    session = sa.table("terminal_session", sa.column("state", sa.String(20)))
    for old, new in pairs:
        op.execute(session.update().where(session.c.state == old).values(state=new))


def upgrade() -> None:
    op.add_column(
        "terminal_server", sa.Column("rdp_port", sa.Integer(), server_default=sa.text("3389"), nullable=False)
    )
    op.add_column("terminal_server", sa.Column("cert_fingerprint", sa.String(200), nullable=True))
    op.add_column(
        "terminal_server", sa.Column("cert_ignore", sa.Boolean(), server_default=sa.false(), nullable=False)
    )
    op.add_column(
        "terminal_server", sa.Column("shell_mode", sa.String(16), server_default="command", nullable=False)
    )
    op.add_column("terminal_server", sa.Column("shell_command", sa.String(1000), nullable=True))
    op.add_column("terminal_server", sa.Column("public_key", sa.String(64), nullable=True))
    _rename_states(_RENAMED)


def downgrade() -> None:
    # "logging_off" did not exist: such a session was still live, with its robot connected.
    _rename_states([(new, old) for old, new in _RENAMED] + [("logging_off", "robot_connected")])
    op.drop_column("terminal_server", "public_key")
    op.drop_column("terminal_server", "shell_command")
    op.drop_column("terminal_server", "shell_mode")
    op.drop_column("terminal_server", "cert_ignore")
    op.drop_column("terminal_server", "cert_fingerprint")
    op.drop_column("terminal_server", "rdp_port")
