"""Screenshots of the robot's desktop: capture (``mss``), the on-disk spool, the upload.

The script (``sdk.screenshot()``) and the robot (a job that failed) capture the whole desktop (every
monitor) as PNG and put it in the robot's spool directory: the image (``<id>.png``) and what it
belongs to (``<id>.json``: job, log line, time), each written to a temporary name and renamed, so a
spooled screenshot is always whole. The robot's ``Spool`` uploads each to the gateway over HTTP
(``POST /robot/v1/screenshots``, robot key) and deletes it once the gateway answered 200/201. While
the gateway is unreachable or answers 5xx/429 it retries with a growing wait (at most
``MAX_RETRY_S``); the files stay on disk across robot restarts, so a screenshot the script asked for
is not lost. An upload the gateway refuses for good (413, 415, 404, 422) is dropped with a line on
stderr: retrying would be refused again.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rpa_protocol.http import SCREENSHOTS_PATH
from rpa_robot.ids import time_ordered_id

if TYPE_CHECKING:
    import httpx

MAX_RETRY_S = 30.0
_RETRYABLE = {408, 425, 429}


class CaptureError(Exception):
    """No desktop to capture (no display, or the display refused)."""


def capture_png() -> bytes:
    """The whole desktop (all monitors) as PNG bytes."""
    try:
        import mss
        import mss.tools
    except ImportError as exc:  # pragma: no cover - mss is a dependency of the robot
        raise CaptureError(f"mss is not installed: {exc}") from None
    make = getattr(mss, "MSS", None) or mss.mss
    try:
        with make() as sct:
            shot = sct.grab(sct.monitors[0])
            png = mss.tools.to_png(shot.rgb, shot.size)
    except Exception as exc:  # mss raises ScreenShotError, or OSError/XError-like errors underneath
        raise CaptureError(f"the desktop cannot be captured: {exc}") from None
    assert png is not None
    return png


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def spool(
    directory: Path,
    png: bytes,
    *,
    job_id: str | None,
    message_id: str | None = None,
    shot_id: str | None = None,
) -> str:
    """Put a screenshot in the spool directory; its id."""
    shot_id = shot_id or str(time_ordered_id())
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"id": shot_id, "job_id": job_id, "message_id": message_id, "at": datetime.now(UTC).isoformat()}
    # The image first: the spool only sends images that have their metadata, so a crash between the
    # two leaves an image that is never sent half described (and cleaned below).
    _write_atomic(directory / f"{shot_id}.png", png)
    _write_atomic(directory / f"{shot_id}.json", json.dumps(meta).encode())
    return shot_id


class Spool:
    """Uploads what is in ``directory``, in order, until it is empty; wakes on ``wake()``."""

    def __init__(
        self,
        directory: Path,
        http: Callable[[], httpx.AsyncClient],
        key: str,
        say: Callable[[str], None],
        on_empty: Callable[[], None] = lambda: None,
    ) -> None:
        self.dir = directory
        self.http = http
        self.key = key
        self.say = say
        self.on_empty = on_empty
        self._wake = asyncio.Event()
        self._wake.set()  # what a previous run left is sent at start
        self.uploaded = 0

    def wake(self) -> None:
        self._wake.set()

    def pending(self) -> list[Path]:
        """Metadata files of screenshots waiting, oldest first."""
        try:
            found = [p for p in self.dir.glob("*.json") if not p.name.startswith(".")]
        except OSError:
            return []
        return sorted(found, key=_mtime)

    @property
    def empty(self) -> bool:
        return not self.pending()

    async def capture(self, job_id: str, message_id: str | None = None) -> str | None:
        """Capture the desktop now and spool it; its id, None when there is no desktop to capture."""
        try:
            png = await asyncio.to_thread(capture_png)
            shot_id = await asyncio.to_thread(spool, self.dir, png, job_id=job_id, message_id=message_id)
        except (CaptureError, OSError) as exc:
            self.say(f"no screenshot of job {job_id}: {exc}")
            return None
        self.wake()
        return shot_id

    async def run(self) -> None:
        wait = 0.5
        while True:
            await self._wake.wait()
            self._wake.clear()
            failed = False
            for meta_path in self.pending():
                try:
                    done = await self._upload(meta_path)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # network down, gateway restarting: keep it for later
                    self.say(f"screenshot upload failed ({type(exc).__name__}); retrying")
                    done = False
                if not done:
                    failed = True
                    break
            if failed:
                await asyncio.sleep(wait)
                wait = min(MAX_RETRY_S, wait * 2)
                self._wake.set()
            else:
                wait = 0.5
                self.on_empty()

    def _remove(self, meta_path: Path) -> None:
        meta_path.unlink(missing_ok=True)
        meta_path.with_suffix(".png").unlink(missing_ok=True)

    async def _upload(self, meta_path: Path) -> bool:
        """True when this screenshot is dealt with (stored, or refused for good)."""
        try:
            meta, data = await asyncio.to_thread(_read_spooled, meta_path)
        except (OSError, ValueError) as exc:
            self.say(f"dropping unreadable spooled screenshot {meta_path.name}: {exc}")
            self._remove(meta_path)
            return True
        if not meta.get("job_id"):
            self._remove(meta_path)  # taken outside a job: nothing to attach it to
            return True
        form: dict[str, Any] = {"job_id": meta["job_id"], "id": meta["id"], "at": meta.get("at") or ""}
        if meta.get("message_id"):
            form["message_id"] = meta["message_id"]
        r = await self.http().post(
            SCREENSHOTS_PATH,
            data=form,
            files={"file": (f"{meta['id']}.png", data, "image/png")},
            headers={"Authorization": f"Bearer {self.key}"},
        )
        if r.status_code in (200, 201):
            self._remove(meta_path)
            self.uploaded += 1
            return True
        if r.status_code >= 500 or r.status_code in _RETRYABLE or r.status_code in (401, 403):
            return False
        detail = r.text[:300]
        self.say(f"the gateway refused screenshot {meta['id']} ({r.status_code}): {detail}; dropped")
        self._remove(meta_path)
        return True


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # uploaded and removed meanwhile
        return 0.0


def _read_spooled(meta_path: Path) -> tuple[dict[str, Any], bytes]:
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if not isinstance(meta, dict) or not meta.get("id"):
        raise ValueError("not a screenshot's metadata")
    return meta, meta_path.with_suffix(".png").read_bytes()


def spool_dir_from_env() -> Path | None:
    value = os.environ.get("RPA_SCREENSHOT_DIR")
    return Path(value) if value else None


def print_saved(path: Path) -> None:
    print(f"screenshot saved to {path}", file=sys.stderr, flush=True)
