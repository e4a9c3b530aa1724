"""Sealed session credentials (rpa_common.sealing) and the robot's door (rpa_coordinator.door)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from rpa_common.sealing import SealError, SealKeyPair, load_or_create_key_pair, seal, seal_json
from rpa_coordinator.door import RobotDoor


def test_a_box_opens_only_with_its_key_and_its_context() -> None:
    pair, other = SealKeyPair.generate(), SealKeyPair.generate()
    box = seal_json(pair.public, {"password": "Pa55word!", "robot_key": "rbk_x"}, "open_session:1")
    assert "Pa55word" not in box and "rbk_x" not in box
    assert pair.open_json(box, "open_session:1") == {"password": "Pa55word!", "robot_key": "rbk_x"}
    # Two boxes of the same secret differ (a fresh ephemeral key and nonce each time).
    assert seal(pair.public, b"same", "c") != seal(pair.public, b"same", "c")
    with pytest.raises(SealError):
        other.open(box, "open_session:1")  # another coordinator's key
    with pytest.raises(SealError):
        pair.open(box, "open_session:2")  # copied into another session's command
    tampered = box[:-2] + ("A" if box[-2] != "A" else "B") + box[-1]
    with pytest.raises(SealError):
        pair.open(tampered, "open_session:1")
    for bad in ("", "!!!", "AAAA"):
        with pytest.raises(SealError):
            pair.open(bad, "open_session:1")
    with pytest.raises(SealError):
        seal("too-short", b"x", "c")
    assert SealKeyPair.from_text(pair.private_text()).public == pair.public


def test_the_key_file_is_made_once_private_and_refused_when_others_can_read_it(tmp_path: Path) -> None:
    path = tmp_path / "seal.key"
    first = load_or_create_key_pair(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key_pair(path).public == first.public
    path.chmod(0o644)
    with pytest.raises(SealError, match="readable by others"):
        load_or_create_key_pair(path)


ASK = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b'{"want": "session"}\n')
print(s.makefile().readline().strip())
"""


async def _ask(path: Path, *, as_user: str | None = None) -> dict[str, str]:
    argv = [sys.executable, "-c", ASK, str(path)]
    if as_user is not None:
        argv = [
            "setpriv",
            f"--reuid={as_user}",
            "--regid=nogroup",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            ASK,
            str(path),
        ]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    result: dict[str, str] = json.loads(out)
    return result


async def test_the_door_answers_the_accounts_uid_once(tmp_path: Path) -> None:
    door = RobotDoor(tmp_path / "door" / "robot.sock")
    await door.start()
    redeemed: list[int] = []
    try:
        assert stat.S_IMODE((tmp_path / "door" / "robot.sock").stat().st_mode) == 0o666
        sid = str(uuid.uuid4())
        assert (await _ask(door.path))["error"] == "no session is waiting for this OS user"
        door.post(os.getuid(), sid, "rbk_secret", "ws://gw/robot/v1", 30, redeemed.append)
        assert door.waiting(sid)
        answer = await _ask(door.path)
        assert answer == {"session_id": sid, "robot_key": "rbk_secret", "gateway": "ws://gw/robot/v1"}
        assert len(redeemed) == 1 and redeemed[0] > 0  # the robot's pid, from the kernel
        # Single use: a second knock (the same user) gets nothing.
        assert "error" in await _ask(door.path)
        # Expired entries are not handed out; withdrawn ones neither.
        door.post(os.getuid(), sid, "rbk_secret", "ws://gw", -1, redeemed.append)
        assert "error" in await _ask(door.path)
        door.post(os.getuid(), sid, "rbk_secret", "ws://gw", 30, redeemed.append)
        door.withdraw(sid)
        assert not door.waiting(sid) and "error" in await _ask(door.path)
    finally:
        await door.stop()
    assert not door.path.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to knock as another OS user")
async def test_another_os_user_gets_nothing_from_the_door(tmp_path: Path) -> None:
    door_dir = Path(os.path.join("/tmp", f"rpa-door-{uuid.uuid4().hex[:8]}"))
    door = RobotDoor(door_dir / "robot.sock")
    await door.start()
    try:
        # The key waits for root's uid; "nobody" (who could read a command line) knocks first.
        door.post(0, "s1", "rbk_secret", "ws://gw", 30, lambda pid: None)
        answer = await _ask(door.path, as_user="nobody")
        assert answer == {"error": "no session is waiting for this OS user"}
        assert door.waiting("s1")
        assert (await _ask(door.path))["robot_key"] == "rbk_secret"
    finally:
        await door.stop()
        subprocess.run(["rm", "-rf", str(door_dir)], check=False)
