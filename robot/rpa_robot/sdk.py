"""The script SDK: what a process's script uses to talk to the robot running it.

    from rpa_robot import sdk

    args = sdk.input_args()
    sdk.log("working", level="Info", item=3)
    if sdk.should_stop():
        ...
    sdk.set_output(total=42)

The robot passes the channel through the environment: ``RPA_INPUT_FILE`` (the input arguments as a
JSON file, never the command line), ``RPA_SDK_FD`` (a pipe the SDK writes JSON lines to),
``RPA_STOP_FILE`` (appears when a soft stop is requested). Run outside a robot, the SDK still
works: logs go to stderr and there is no input.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import uuid
from datetime import UTC, datetime
from typing import Any, TextIO

LEVELS = ("Debug", "Info", "Warning", "Error", "Critical")

_lock = threading.Lock()
_channel: TextIO | None = None
_channel_opened = False
_output: dict[str, Any] = {}


def _open_channel() -> TextIO | None:
    global _channel, _channel_opened
    if not _channel_opened:
        _channel_opened = True
        fd = os.environ.get("RPA_SDK_FD")
        if fd and fd.isdigit():
            try:
                _channel = os.fdopen(int(fd), "w", buffering=1, encoding="utf-8")
            except OSError:
                _channel = None
    return _channel


def _write(doc: dict[str, Any]) -> bool:
    line = json.dumps(doc, separators=(",", ":"), default=str)
    with _lock:
        channel = _open_channel()
        if channel is None:
            return False
        channel.write(line + "\n")
        channel.flush()
        return True


def input_args() -> dict[str, Any]:
    """The job's input arguments (an empty dict when there are none)."""
    path = os.environ.get("RPA_INPUT_FILE")
    if not path:
        return {}
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return data if isinstance(data, dict) else {}


def log(message: str, level: str = "Info", **fields: Any) -> str:
    """Log one line for the orchestrator; returns its id (made here, so a replay is never doubled)."""
    normalized = level.capitalize()
    if normalized not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}")
    entry_id = str(uuid.uuid4())
    doc = {
        "kind": "log",
        "id": entry_id,
        "level": normalized,
        "message": str(message),
        "fields": fields or None,
        "at": datetime.now(UTC).isoformat(),
    }
    if not _write(doc):
        extra = f" {json.dumps(fields, default=str)}" if fields else ""
        print(f"[{normalized}] {message}{extra}", file=sys.stderr, flush=True)
    return entry_id


def should_stop() -> bool:
    """True once a soft stop was requested: finish the current step and return."""
    path = os.environ.get("RPA_STOP_FILE")
    return path is not None and path != "" and os.path.exists(path)


def set_output(**values: Any) -> None:
    """Set output arguments (merged with those set before); they must be JSON values."""
    json.dumps(values)  # refuse what cannot travel, here, where the script author sees it
    _output.update(values)
    _write({"kind": "output", "values": values})


def job_id() -> str | None:
    """The id of the job this script runs for (None when run locally)."""
    return os.environ.get("RPA_JOB_ID") or None
