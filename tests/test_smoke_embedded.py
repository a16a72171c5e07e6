from __future__ import annotations

import pytest


@pytest.mark.redis
def test_redis_line_answers(redis_line_url: str) -> None:
    from statekit.backends.redis import create_client

    client = create_client(redis_line_url)
    client.set("k", "v")
    assert client.get("k") == b"v"


@pytest.mark.s3
def test_s3_bucket_ready(s3_url: str, s3_server) -> None:
    from statekit.config import parse_url

    bucket = parse_url(s3_url).bucket
    names = [b["Name"] for b in s3_server.client().list_buckets()["Buckets"]]
    assert bucket in names
