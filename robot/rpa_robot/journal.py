"""The robot's durable outbox: every reliable frame is written here with its ``seq`` before it is sent.

An append-only JSON-lines file holds frames not yet acknowledged by the gateway; ``state.json``
holds the highest acknowledged ``seq`` and the next ``seq`` to use. While the gateway is
unreachable frames pile up here; after reconnecting the robot replays those above the gateway's
``resume.last_seq`` in order, and forgets each once it is acknowledged. The file is truncated
whenever nothing is pending (and compacted when it grows), so it stays small.

It also counts the log lines not yet acknowledged (``log_lines``): the robot stops taking more from
its scripts beyond a bound (``RobotClient.log_room``), so the journal does not grow without end while
the gateway pushes back or is away.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from rpa_protocol import encode

COMPACT_BYTES = 4 * 1024 * 1024


class Journal:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "journal.jsonl"
        self.state_path = directory / "state.json"
        self.acked = 0
        self.next_seq = 1
        self.pending: deque[tuple[int, str]] = deque()
        self._log_counts: dict[int, int] = {}  # seq of a pending log frame -> its lines
        self.log_lines = 0
        self._load()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open for appends

    def _load(self) -> None:
        if self.state_path.exists():
            try:
                state = json.loads(self.state_path.read_text(encoding="utf-8"))
                self.acked = int(state.get("acked", 0))
                self.next_seq = max(1, int(state.get("next_seq", 1)))
            except (ValueError, TypeError):
                pass
        if self.path.exists():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        doc = json.loads(line)
                        seq = int(doc["seq"])
                    except (ValueError, KeyError, TypeError):
                        continue  # a line torn by a crash mid-write was never sent
                    if seq > self.acked:
                        self.pending.append((seq, line))
                        if doc.get("type") == "log" and isinstance(doc.get("entries"), list):
                            self._count(seq, len(doc["entries"]))
                    self.next_seq = max(self.next_seq, seq + 1)
        self.next_seq = max(self.next_seq, self.acked + 1)

    def append(self, make: Callable[[int], BaseModel]) -> int:
        """Build the frame with the next ``seq``, write it durably (to the OS), queue it for sending."""
        seq = self.next_seq
        self.next_seq += 1
        frame = make(seq)
        line = encode(frame)
        self._file.write(line + "\n")
        self._file.flush()
        self.pending.append((seq, line))
        entries = getattr(frame, "entries", None)
        if getattr(frame, "type", None) == "log" and isinstance(entries, list):
            self._count(seq, len(entries))
        return seq

    def _count(self, seq: int, lines: int) -> None:
        self._log_counts[seq] = lines
        self.log_lines += lines

    def _uncount(self, seq: int) -> None:
        self.log_lines -= self._log_counts.pop(seq, 0)

    def reserve(self) -> int:
        """A ``seq`` for a request frame (``task.take``...), which is sent but never journaled.

        Not saved at once: a number reused after a crash is harmless, since the gateway does not
        compare request numbers with ``inbound_seq`` (docs/robot-protocol.md 2.12)."""
        seq = self.next_seq
        self.next_seq += 1
        return seq

    def after(self, seq: int) -> list[tuple[int, str]]:
        return [(s, line) for s, line in self.pending if s > seq]

    def ack(self, seq: int) -> None:
        """The gateway applied every frame up to ``seq``."""
        if seq <= self.acked and not (self.pending and self.pending[0][0] <= seq):
            return
        while self.pending and self.pending[0][0] <= seq:
            self._uncount(self.pending.popleft()[0])
        self.acked = max(self.acked, seq)
        self._save_state()
        if not self.pending:
            self._file.truncate(0)
            self._file.seek(0)
        elif self._file.tell() > COMPACT_BYTES:
            self._rewrite()

    def drop(self, seq: int) -> None:
        """Forget one frame the gateway refused as malformed (it would be refused forever)."""
        self.pending = deque(item for item in self.pending if item[0] != seq)
        self._uncount(seq)
        self._rewrite()

    def resume(self, last_seq: int) -> None:
        """After ``welcome``: frames up to ``last_seq`` were applied; new ones continue above it."""
        self.ack(last_seq)
        if self.next_seq <= last_seq:
            self.next_seq = last_seq + 1
            self._save_state()

    @property
    def empty(self) -> bool:
        return not self.pending

    def _save_state(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"acked": self.acked, "next_seq": self.next_seq}), encoding="utf-8")
        os.replace(tmp, self.state_path)

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for _, line in self.pending:
                f.write(line + "\n")
        self._file.close()
        os.replace(tmp, self.path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def close(self) -> None:
        self._file.close()
