"""Adversarial review of :meth:`BlobStore.put`: faults driven step by step.

A commit whose reply is lost (S3 applied it, the client timed out) leaves an object the
caller was told is not stored: put() must not leave it behind, and must not send the
commit again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from statekit.blobs import BlobStore
from statekit.embedded import S3Server
from statekit.errors import BackendUnavailable

MiB = 1024 * 1024

pytestmark = pytest.mark.s3


def _lose_reply(store: BlobStore, op: str, calls: list[str]) -> None:
    """*op* reaches S3 and is applied, then its reply is lost (a read timeout)."""
    from botocore.exceptions import ReadTimeoutError

    client = store.backend.client
    real: Callable[..., Any] = getattr(client, op)

    def applied_then_lost(**kwargs: Any) -> Any:
        calls.append(op)
        real(**kwargs)
        raise ReadTimeoutError(endpoint_url="http://127.0.0.1")

    setattr(client, op, applied_then_lost)


@pytest.mark.parametrize(("op", "size"), [("put_object", 1000), ("complete_multipart_upload", 6 * MiB)])
def test_commit_reply_lost_leaves_no_object(s3_server: S3Server, s3_url: str, op: str, size: int) -> None:
    bucket = s3_url.split("@", 1)[1].split("?", 1)[0]
    direct = s3_server.client()
    store = BlobStore(s3_url + "&retries=0", part_size=5 * MiB, multipart_threshold=5 * MiB)
    calls: list[str] = []
    _lose_reply(store, op, calls)
    with pytest.raises(BackendUnavailable, match="outcome unknown"):
        store.put(b"x" * size, content_type="application/octet-stream")
    assert calls == [op]  # sent once, never again
    assert direct.list_objects_v2(Bucket=bucket).get("Contents", []) == []
    assert direct.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.parametrize(("op", "size"), [("PutObject", 1000), ("CompleteMultipartUpload", 6 * MiB)])
def test_commit_reply_lost_is_not_resent_by_botocore(s3_server: S3Server, s3_url: str, op: str,
                                                    size: int) -> None:
    """The same, with the store's default retries: botocore's retry must not send the
    commit again (with ``If-None-Match`` the second one is refused as an existing blob)."""
    from botocore.exceptions import ReadTimeoutError

    bucket = s3_url.split("@", 1)[1].split("?", 1)[0]
    direct = s3_server.client()
    store = BlobStore(s3_url, part_size=5 * MiB, multipart_threshold=5 * MiB)
    client = store.backend.client
    sent: list[str] = []

    def applied_then_lost(request: Any, **_: Any) -> Any:
        sent.append(op)
        response = client._endpoint.http_session.send(request)
        if len(sent) == 1:
            raise ReadTimeoutError(endpoint_url=request.url)
        return response

    client.meta.events.register(f"before-send.s3.{op}", applied_then_lost)
    with pytest.raises(BackendUnavailable, match="outcome unknown"):
        store.put(b"x" * size, content_type="application/octet-stream")
    assert sent == [op]
    assert direct.list_objects_v2(Bucket=bucket).get("Contents", []) == []

