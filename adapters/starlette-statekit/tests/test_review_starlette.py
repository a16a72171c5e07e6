"""Review of starlette_statekit (issue 18): defects found by a reviewer, each
reproduced here against the suite's Redis (in-process, httpx.ASGITransport)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from starlette.applications import Starlette
from test_starlette_adapter import _no_statekit_env, client  # noqa: F401 -- its environment fixture (autouse)

from starlette_statekit import StateKit, get_state
from starlette_statekit.uploads import save_upload

pytestmark = [pytest.mark.redis]


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


def test_an_outage_in_a_websocket_handler_closes_it_with_try_again_later(redis_url: str) -> None:
    """A BackendUnavailable raised by a WebSocket endpoint went to StateKit's handler,
    which answered with the 503 page: after the accept that is an HTTP response on an
    open WebSocket (``websocket.http.response.start``, an ASGI protocol error: uvicorn
    fails the connection, 1011, with a traceback in the log), and before it one the
    server may not take. Now an accepted socket is closed with 1013, "try again
    later", as the session middleware closes one it cannot load a session for."""
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    from statekit.errors import BackendUnavailable

    async def after_accept(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hello")
        raise BackendUnavailable("Redis unavailable during a test")

    async def before_accept(websocket: WebSocket) -> None:
        raise BackendUnavailable("Redis unavailable during a test")

    app = Starlette(routes=[WebSocketRoute("/after", after_accept), WebSocketRoute("/before", before_accept)])
    StateKit(app, redis_url=redis_url, key_prefix="r" + uuid.uuid4().hex[:8], sessions_enabled=False,
             broadcast_enabled=False)

    async def connect(path: str, extensions: dict[str, Any]) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        inbox = [{"type": "websocket.connect"}]

        async def receive() -> dict[str, Any]:
            if inbox:
                return inbox.pop()
            await asyncio.sleep(3600)  # the client says nothing more
            raise AssertionError("unreachable")

        async def send(message: Any) -> None:
            sent.append(dict(message))

        scope = {"type": "websocket", "asgi": {"version": "3.0"}, "scheme": "ws", "path": path,
                 "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": [],
                 "client": ("127.0.0.1", 1), "server": None, "subprotocols": [],
                 "extensions": extensions}
        await asyncio.wait_for(app(scope, receive, send), 10)
        return sent

    denial = {"websocket.http.response": {}}

    async def main() -> tuple[list[dict[str, Any]], ...]:
        return await connect("/after", denial), await connect("/before", denial), await connect("/before", {})

    after, denied, refused = asyncio.run(main())
    assert [m["type"] for m in after] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert after[-1]["code"] == 1013  # no HTTP response on the open socket
    # before the accept: the 503 page where the server takes a denial response, else a close
    assert [m["type"] for m in denied] == ["websocket.http.response.start", "websocket.http.response.body"]
    assert denied[0]["status"] == 503
    assert [(m["type"], m["code"]) for m in refused] == [("websocket.close", 1013)]
