"""The blob store: a directory, and S3-compatible storage (moto's server as the S3 endpoint, over
real HTTP through boto3); the image sniffing that decides a screenshot's type from its bytes."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer
from pydantic import SecretStr

from rpa_common.blobs import DirectoryBlobStore, S3BlobStore, blob_store, check_key, sniff_image
from rpa_common.settings import Settings
from tests.images import make_png
from tests.support import free_port

SECRET = "moto-secret-key-never-logged"
JPEG = bytes.fromhex("ffd8ffe000104a46494600010100000100010000ffc0001108002a003803012200021101031101ffd9")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _s3_settings(endpoint: str, bucket: str) -> Settings:
    return Settings(
        blob_store="s3",
        s3_endpoint_url=endpoint,
        s3_bucket=bucket,
        s3_region="eu-west-1",
        s3_access_key_id="moto-key-id",
        s3_secret_access_key=SecretStr(SECRET),
    )


async def _round_trip(store: DirectoryBlobStore | S3BlobStore) -> None:
    png = make_png(5, 7)
    await store.put("screenshots/acc/one.png", png, "image/png")
    await store.put("screenshots/acc/two.png", b"second", "image/png")
    assert await store.get("screenshots/acc/one.png") == png
    await store.put("screenshots/acc/one.png", b"replaced", "image/png")  # a retried upload
    assert await store.get("screenshots/acc/one.png") == b"replaced"
    assert await store.get("screenshots/acc/none.png") is None
    await store.delete(["screenshots/acc/one.png", "screenshots/acc/missing.png"])  # missing: fine
    assert await store.get("screenshots/acc/one.png") is None
    assert await store.get("screenshots/acc/two.png") == b"second"
    await store.delete([])
    for bad in ("../etc/passwd", "/abs/path", "a//b", "a/./b"):
        with pytest.raises(ValueError):
            await store.put(bad, b"x", "image/png")


async def test_directory_store(tmp_path: Path) -> None:
    store = blob_store(Settings(blob_dir=str(tmp_path / "blobs")))
    assert isinstance(store, DirectoryBlobStore)
    await _round_trip(store)
    assert (tmp_path / "blobs" / "screenshots" / "acc" / "two.png").read_bytes() == b"second"
    assert not list((tmp_path / "blobs").rglob(".tmp-*"))  # no temporary file left behind


async def test_s3_store_against_an_s3_compatible_server(
    s3_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = _s3_settings(s3_endpoint, "rpa-blobs")
    raw = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="eu-west-1",
        aws_access_key_id="moto-key-id",
        aws_secret_access_key=SECRET,
    )
    raw.create_bucket(Bucket="rpa-blobs", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    store = blob_store(settings)
    assert isinstance(store, S3BlobStore)
    await _round_trip(store)
    # The objects are really in the bucket, with their type.
    head = raw.head_object(Bucket="rpa-blobs", Key="screenshots/acc/two.png")
    assert head["ContentType"] == "image/png" and head["ContentLength"] == len(b"second")
    keys = [o["Key"] for o in raw.list_objects_v2(Bucket="rpa-blobs").get("Contents", [])]
    assert keys == ["screenshots/acc/two.png"]
    # More than S3's 1,000 keys per delete call.
    many = [f"screenshots/acc/{n}.png" for n in range(1003)]
    for key in many[:3] + many[-3:]:
        await store.put(key, b"x", "image/png")
    await store.delete(many)
    assert all([await store.get(k) is None for k in many[:3] + many[-3:]])
    # The secret is never shown: not in the settings' or the store's repr, not in any log record.
    assert SECRET not in repr(settings) and SECRET not in repr(store)
    assert SECRET not in caplog.text


async def test_s3_settings_need_a_bucket() -> None:
    with pytest.raises(ValueError, match="RPA_S3_BUCKET"):
        Settings(blob_store="s3")


def test_keys_are_plain_relative_paths() -> None:
    assert check_key("screenshots/a-b/c_d.png") == "screenshots/a-b/c_d.png"
    for bad in ("", "..", "a/../b", "/a", "a/", "a b", "a\\b", "a/" * 200 + "b"):
        with pytest.raises(ValueError):
            check_key(bad)


def test_sniff_reads_the_bytes_never_a_name() -> None:
    assert sniff_image(make_png(640, 480)) == ("image/png", 640, 480)
    assert sniff_image(JPEG) == ("image/jpeg", 56, 42)
    for other in (b"", b"GIF89a....", b"\x89PNG\r\n\x1a\n", b"%PDF-1.7", b"<svg/>", b"BM" + b"\0" * 60):
        assert sniff_image(other) is None
