"""S3-compatible stores: outside AWS the boto3 client computes and validates only
the checksums a request requires (boto3 >= 1.36 adds CRC32 to every upload by
default, which some MinIO versions, Backblaze B2 and GCS interop refuse); AWS keeps
botocore's defaults; a URL option overrides either way."""

from __future__ import annotations

import io
import urllib.parse
from typing import Any

import pytest

from statekit.blobs import BlobStore
from statekit.errors import ConfigError

pytest.importorskip("boto3")

SETTINGS = ("request_checksum_calculation", "response_checksum_validation")


@pytest.fixture(autouse=True)
def _no_checksum_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SETTINGS:
        monkeypatch.delenv(f"AWS_{name.upper()}", raising=False)


def _config(store: BlobStore) -> tuple[Any, Any]:
    cfg = store.client.meta.config
    return cfg.request_checksum_calculation, cfg.response_checksum_validation


def _with(url: str, **options: str) -> str:
    sep = "&" if "?" in url else "?"
    return url + sep + urllib.parse.urlencode(options)


@pytest.mark.s3
def test_non_aws_endpoint_gets_when_required(s3_url: str) -> None:
    assert "endpoint_url=" in s3_url
    assert _config(BlobStore(s3_url)) == ("when_required", "when_required")


@pytest.mark.parametrize("url", [
    "s3://key:secret@bucket/p?region=eu-west-1",
    "s3://key:secret@bucket?region=eu-west-1&endpoint_url=https://s3.eu-west-1.amazonaws.com",
    "s3://key:secret@bucket?region=cn-north-1&endpoint_url=https://s3.cn-north-1.amazonaws.com.cn",
])
def test_aws_keeps_botocore_defaults(url: str) -> None:
    store = BlobStore(url)  # no request is sent: the client is only built
    assert _config(store) == ("when_supported", "when_supported")


def test_url_option_overrides_and_is_validated() -> None:
    base = "s3://key:secret@bucket?region=us-east-1&endpoint_url=http://127.0.0.1:9"
    store = BlobStore(_with(base, request_checksum_calculation="when_supported"))
    assert _config(store) == ("when_supported", "when_required")
    aws = BlobStore(_with("s3://key:secret@bucket?region=us-east-1",
                            response_checksum_validation="when_required"))
    assert _config(aws) == ("when_supported", "when_required")
    with pytest.raises(ConfigError, match="request_checksum_calculation"):
        BlobStore(_with(base, request_checksum_calculation="always"))


def test_environment_setting_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_supported")
    store = BlobStore("s3://key:secret@bucket?region=us-east-1&endpoint_url=http://127.0.0.1:9")
    assert _config(store) == ("when_supported", "when_required")


def _sent_headers(store: BlobStore) -> list[dict[str, str]]:
    """Headers of the data requests *store* sends from now on. PutObjectTagging is
    left out: S3 requires a checksum on it (botocore sends one under either setting)."""
    sent: list[dict[str, str]] = []

    def record(request: Any, **_: Any) -> None:
        if "tagging" not in urllib.parse.urlsplit(request.url).query:
            sent.append({k.lower(): str(v) for k, v in request.headers.items()})

    store.client.meta.events.register("before-send.s3.*", record)
    return sent


def _crc(sent: list[dict[str, str]]) -> bool:
    """Whether a request carried a CRC checksum (as a header or a trailer)."""
    return any(k.startswith(("x-amz-checksum-crc", "x-amz-trailer")) for h in sent for k in h)


@pytest.mark.s3
def test_uploads_work_and_carry_no_default_crc(s3_url: str) -> None:
    payload = b"statekit " * 1000
    small = BlobStore(_with(s3_url, checksum="none"))
    sent = _sent_headers(small)
    blob = small.put(io.BytesIO(payload), content_type="text/plain")
    assert small.open(blob.key).read() == payload
    assert sent and not _crc(sent)

    # botocore's default (what every S3-compatible store got before): a CRC on the upload
    crc = BlobStore(_with(s3_url, checksum="none", request_checksum_calculation="when_supported"))
    sent_crc = _sent_headers(crc)
    crc.put(io.BytesIO(payload), content_type="text/plain")
    assert _crc(sent_crc)

    # statekit's own SHA-256 still goes out, and a multipart upload still completes
    signed = BlobStore(_with(s3_url, part_size="5MiB", multipart_threshold="5MiB"))
    sent_sha = _sent_headers(signed)
    big = b"x" * (11 * 1024 * 1024)
    big_blob = signed.put(io.BytesIO(big), content_type="application/octet-stream")
    assert signed.open(big_blob.key).read() == big
    assert sum("x-amz-checksum-sha256" in h for h in sent_sha) >= 3  # the parts
    assert not _crc(sent_sha)
