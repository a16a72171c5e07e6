"""Review of starlette_statekit (issue 18): defects found by a reviewer, each
reproduced here against the suite's Redis (in-process, httpx.ASGITransport)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from starlette_statekit import StateKit, get_state
from starlette_statekit.uploads import save_upload

pytestmark = [pytest.mark.redis]


@pytest.fixture(autouse=True)
def _no_statekit_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("STATEKIT_REDIS_URL", "STATEKIT_BLOBS_URL", "STATEKIT_CACHE_URL", "STATEKIT_SESSION_URL",
                 "STATEKIT_BROADCAST_URL", "STATEKIT_KEY_PREFIX", "STATEKIT_SECRET_KEYS"):
        monkeypatch.delenv(name, raising=False)
    yield


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def test_a_chunked_upload_over_the_limit_is_refused_before_its_body_is_spooled(
        redis_url: str, tmp_path: Path) -> None:
    """A request without Content-Length (Transfer-Encoding: chunked) escaped the 413
    by length: Starlette's form parser spooled the whole file part to disk (4 MiB
    against a 64 KiB limit here, any size in production) before the limit was
    checked. The body is now counted while the form is parsed: 413 once it passes
    the limit plus the form overhead."""
    app = FastAPI()
    StateKit(app, redis_url=redis_url, blobs_url=f"file://{tmp_path}", key_prefix="r" + uuid.uuid4().hex[:8],
             blobs_max_size="64KiB", sessions_enabled=False)

    @app.post("/files")
    async def upload(request: Request) -> dict[str, str]:
        blob = await save_upload(request, "file")
        return {"key": blob.key, "title": str((await request.form())["title"])}  # still the request's form

    boundary = "reviewboundary"
    chunk, total = 16 * 1024, 4 * 2**20
    pulled = 0

    async def body(size: int) -> AsyncIterator[bytes]:
        nonlocal pulled
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nhello\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode()
        pulled += len(head)
        yield head
        sent = 0
        while sent < size:
            pulled += chunk
            sent += chunk
            yield b"x" * chunk
        tail = f"\r\n--{boundary}--\r\n".encode()
        pulled += len(tail)
        yield tail

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}

    async def main() -> tuple[int, int, int, list[str]]:
        nonlocal pulled
        async with client(app) as http:
            small = await http.post("/files", content=body(chunk), headers=headers)
            assert small.status_code == 200, small.text  # chunked and within the limit: stored
            assert small.json()["title"] == "hello"
            pulled = 0
            big = await http.post("/files", content=body(total), headers=headers)
            assert "content-length" not in big.request.headers
            keys = [b.key async for b in get_state(app).blobs.list()]
            return big.status_code, pulled, len(keys), [small.json()["key"]] == keys

    status, read, stored, only_small = asyncio.run(main())
    print(f"chunked {total} B upload, 64 KiB limit: {read} B read before the answer")
    assert status == 413
    assert read <= 64 * 1024 + 64 * 1024 + 2 * chunk  # the limit, the form overhead, a chunk in flight
    assert (stored, only_small) == (1, True)
