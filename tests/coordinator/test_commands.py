"""Coordinator commands carry an explicit ``kind``: the coordinator reads it instead of trying one
model, then the other."""

from __future__ import annotations

import json
import uuid

import pytest
from pydantic import ValidationError

from rpa_common.nats.messages import CloseSession, OpenSession, decode_coordinator_command


def test_commands_are_told_apart_by_kind() -> None:
    open_cmd = OpenSession(
        session_id=uuid.uuid4(),
        account_id=uuid.uuid4(),
        unattended_account_id=uuid.uuid4(),
        robot_id=uuid.uuid4(),
        job_id=None,
        login="svc",
        sealed="box",
    )
    close_cmd = CloseSession(session_id=uuid.uuid4(), reason="job over")
    assert json.loads(open_cmd.encode())["kind"] == "open_session"
    assert json.loads(close_cmd.encode())["kind"] == "close_session"
    assert decode_coordinator_command(open_cmd.encode()) == open_cmd
    assert decode_coordinator_command(close_cmd.encode()) == close_cmd
    # A close that happens to carry open's fields is still a close: the kind decides.
    both = {**json.loads(open_cmd.encode()), "kind": "close_session"}
    assert isinstance(decode_coordinator_command(json.dumps(both).encode()), CloseSession)
    for bad in ({"session_id": str(uuid.uuid4())}, {"kind": "reboot", "session_id": str(uuid.uuid4())}):
        with pytest.raises(ValidationError):
            decode_coordinator_command(json.dumps(bad).encode())
