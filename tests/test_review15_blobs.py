"""Review 15 of the blob store: loose ends, each failing before its fix.

* S3 ``part_size`` had no upper bound (S3 takes parts of at most 5 GiB), nor
  ``multipart_threshold`` (one ``PutObject`` of at most 5 GiB), and the part size a
  writer grows to for a long upload could pass 5 GiB.
"""

from __future__ import annotations

from typing import Any

import pytest

from statekit.blobs import BlobStore, s3
from statekit.blobs.protocol import WriteRequest
from statekit.errors import ConfigError

MiB = 1024 * 1024
GiB = 1024 * MiB


def _bucket(s3_url: str) -> str:
    return s3_url.split("@", 1)[1].split("?", 1)[0]


def _now() -> Any:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc)


# -- S3 part sizes within S3's limits -----------------------------------------------------
_PART_RANGE = r"part_size must be between 5242880 bytes \(5 MiB\) and 5368709120 bytes \(5 GiB\)"


@pytest.mark.s3
@pytest.mark.parametrize(("option", "value", "message"), [
    ("part_size", 5 * GiB + 1, _PART_RANGE),
    ("part_size", 5 * MiB - 1, _PART_RANGE),
    ("multipart_threshold", 5 * GiB + 1, r"multipart_threshold must be at most 5368709120 bytes \(5 GiB\)"),
])
def test_s3_sizes_out_of_range_are_refused_naming_the_limit(s3_url: str, option: str, value: int,
                                                           message: str) -> None:
    """A part larger than 5 GiB (S3's largest part) was taken and every multipart upload
    then failed at its first part; a threshold above 5 GiB made PutObjects S3 refuses."""
    with pytest.raises(ConfigError, match=message):
        BlobStore(s3_url, **{option: value})
    with pytest.raises(ConfigError, match=message):
        BlobStore(f"{s3_url}&{option}={value}")
    assert BlobStore(s3_url, part_size=5 * GiB, multipart_threshold=5 * GiB).backend.part_size == 5 * GiB


@pytest.mark.s3
def test_s3_parts_sized_for_a_known_size_stay_within_5_gib(s3_url: str) -> None:
    """A size too large for 10,000 parts of 5 GiB: the writer's parts were sized past
    S3's limit; they stop at 5 GiB (the upload then fails at its 10,001st part, saying
    S3 stores nothing that large)."""
    store = BlobStore(s3_url)
    req = WriteRequest("2026/01/01/" + "7" * 32, "application/octet-stream", "attachment", {}, _now(),
                       size_hint=60 * 1024 * GiB)
    writer: Any = store.backend.writer(req)
    assert writer._part_size == 5 * GiB
    writer.abort()


@pytest.mark.s3
def test_s3_parts_grown_for_an_unknown_size_stay_within_5_gib(s3_url: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """An input of unknown size: at every 1000th part the part size doubles, and it
    doubled past 5 GiB from a part_size above 2.5 GiB. Scaled down (the limit 3 bytes,
    parts of 2), the parts counted, not sent (a fake part upload: the sizes are pure
    logic); S3 sees the multipart upload start and its abort."""
    store = BlobStore(s3_url)
    writer: Any = store.backend.writer(WriteRequest("2026/01/01/" + "8" * 32, "application/octet-stream",
                                                    "attachment", {}, _now()))
    monkeypatch.setattr(s3, "MAX_PART_SIZE", 3)
    monkeypatch.setattr(store.backend, "multipart_threshold", 2)
    monkeypatch.setattr(writer, "_part_size", 2)
    monkeypatch.setattr(writer, "_upload_part", lambda number, data: {"PartNumber": number, "ETag": "e"})
    sizes = []
    for _ in range(1000):
        writer.write(b"xx")
        sizes.append(writer._part_size)
    writer.abort()
    assert sizes[:999] == [2] * 999 and sizes[999] == 3  # grown at the 1000th part, to the limit
    assert store.backend.list_incomplete() == []
