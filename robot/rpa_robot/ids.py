"""Ids a robot makes for what it sends: time-ordered UUIDs (version 7, RFC 9562).

The gateway accepts any UUID as a log line's or screenshot's id. A time-ordered one is stored
faster: the primary key's index grows at its right-hand end instead of at random pages, so a COPY
of log lines touches a few hot pages instead of one page of the index per line (``bench/logs.py
--ids v4`` shows the difference). The first 48 bits are the Unix time in milliseconds, then the
version, 12 random bits, the variant and 62 more random bits: 74 random bits a millisecond, unique
without coordination. The bits come from ``random`` (reseeded in a forked child): an id is not a
secret, and ``os.urandom`` would cost a system call per line.
"""

from __future__ import annotations

import random
import time
import uuid

_getrandbits = random.getrandbits
_time_ns = time.time_ns
_VERSION_AND_VARIANT = (0x7 << 76) | (0b10 << 62)
_LOW_62 = (1 << 62) - 1
_LOW_48 = (1 << 48) - 1


def time_ordered_id(at_ms: int | None = None) -> uuid.UUID:
    """A new UUID version 7 for ``at_ms`` (milliseconds since the epoch; now by default)."""
    ms = _time_ns() // 1_000_000 if at_ms is None else at_ms
    rand = _getrandbits(74)
    return uuid.UUID(
        int=((ms & _LOW_48) << 80) | _VERSION_AND_VARIANT | ((rand >> 62) << 64) | (rand & _LOW_62)
    )
