"""The blob store: where screenshots' bytes live (their metadata is in the database).

Two kinds, chosen by ``RPA_BLOB_STORE``:

- ``directory`` (default): files under ``RPA_BLOB_DIR``. The API (which serves blobs) and the
  gateway (which stores what robots upload) must see the same directory: one machine, or a shared
  volume (deploy/compose.yaml, deploy/k8s).
- ``s3``: an S3-compatible bucket (AWS S3, MinIO, Ceph...) through boto3, in a worker thread so the
  event loop never waits on it. The secret access key is a ``SecretStr``: never logged or shown.

Keys are relative paths made by the orchestrator (``screenshots/<account>/<id>.png``), never by a
client. A ``put`` is whole or absent (a temporary file renamed into place; S3 puts are atomic), and
putting the same key again replaces it, so a robot retrying an upload is harmless. Deleting a key
that is not there is not an error: retention may delete a blob twice after a crash.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from rpa_common.settings import Settings

_KEY = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_.-]+)*$")


def check_key(key: str) -> str:
    """``key`` if it is a plain relative path (no ``..``, no leading ``/``), else ValueError."""
    if not _KEY.match(key) or any(part in ("", ".", "..") for part in key.split("/")) or len(key) > 300:
        raise ValueError(f"not a blob key: {key!r}")
    return key


class BlobStore(Protocol):
    """What the orchestrator needs of a blob store."""

    async def put(self, key: str, data: bytes, content_type: str) -> None: ...

    async def get(self, key: str) -> bytes | None:
        """The blob's bytes, or None when there is no such blob."""
        ...

    async def delete(self, keys: list[str]) -> None:
        """Delete these blobs; missing ones are fine."""
        ...


class DirectoryBlobStore:
    """Blobs as files under ``root``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
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

    def _get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def _delete(self, keys: list[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        await asyncio.to_thread(self._put, key, data)

    async def get(self, key: str) -> bytes | None:
        return await asyncio.to_thread(self._get, key)

    async def delete(self, keys: list[str]) -> None:
        await asyncio.to_thread(self._delete, keys)


class S3BlobStore:
    """Blobs as objects of one bucket of an S3-compatible service."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> None:
        self.bucket = bucket
        self._options: dict[str, Any] = {"endpoint_url": endpoint_url, "region_name": region}
        if access_key_id is not None:
            self._options["aws_access_key_id"] = access_key_id
            self._options["aws_secret_access_key"] = secret_access_key
        self._client: Any = None

    def __repr__(self) -> str:  # never the secret
        return f"S3BlobStore(bucket={self.bucket!r}, endpoint_url={self._options['endpoint_url']!r})"

    def _s3(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.session.Session().client("s3", **self._options)
        return self._client

    def _put(self, key: str, data: bytes, content_type: str) -> None:
        self._s3().put_object(Bucket=self.bucket, Key=check_key(key), Body=data, ContentType=content_type)

    def _get(self, key: str) -> bytes | None:
        s3 = self._s3()
        try:
            answer = s3.get_object(Bucket=self.bucket, Key=check_key(key))
        except s3.exceptions.NoSuchKey:
            return None
        data: bytes = answer["Body"].read()
        return data

    def _delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # S3 takes at most 1,000 keys per call
            chunk = [{"Key": check_key(k)} for k in keys[start : start + 1000]]
            answer = self._s3().delete_objects(Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True})
            errors = answer.get("Errors") or []
            if errors:
                first = errors[0]
                raise OSError(f"S3 refused to delete {first.get('Key')}: {first.get('Code')}")

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        await asyncio.to_thread(self._put, key, data, content_type)

    async def get(self, key: str) -> bytes | None:
        return await asyncio.to_thread(self._get, key)

    async def delete(self, keys: list[str]) -> None:
        if keys:
            await asyncio.to_thread(self._delete, keys)


def blob_store(settings: Settings) -> BlobStore:
    """The blob store the settings name."""
    if settings.blob_store == "s3":
        assert settings.s3_bucket is not None  # checked by Settings
        secret = settings.s3_secret_access_key
        return S3BlobStore(
            settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=secret.get_secret_value() if secret is not None else None,
        )
    return DirectoryBlobStore(settings.blob_dir)


_shared: dict[int, tuple[Settings, BlobStore]] = {}


def shared_blob_store(settings: Settings) -> BlobStore:
    """One blob store per settings object in this process (an S3 client is worth keeping)."""
    held = _shared.get(id(settings))
    if held is None or held[0] is not settings:
        held = (settings, blob_store(settings))
        _shared[id(settings)] = held
    return held[1]


# Images: the type comes from the bytes, never from a name ------------------------------------------

PNG = "image/png"
JPEG = "image/jpeg"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sniff_image(data: bytes) -> tuple[str, int | None, int | None] | None:
    """(content type, width, height) of a PNG or JPEG, from its bytes; None for anything else."""
    if data.startswith(_PNG_MAGIC) and len(data) >= 24 and data[12:16] == b"IHDR":
        return PNG, int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data.startswith(b"\xff\xd8\xff"):
        width, height = _jpeg_size(data)
        return JPEG, width, height
    return None


def _jpeg_size(data: bytes) -> tuple[int | None, int | None]:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None, None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return width, height
        i += 2 + length
    return None, None
