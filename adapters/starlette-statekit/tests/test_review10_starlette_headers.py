"""Review (issue 18) of SessionMiddleware's Set-Cookie append (5bd931a): as
``MutableHeaders(scope=message).append`` did, the app's own headers are kept in order
(a tuple of header pairs included, its own Set-Cookie too), the session cookie added
after them, and the message's original header list is not changed in place."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from starlette_statekit.sessions import SessionMiddleware
from statekit.sessions.aio import AsyncSessionStore

pytestmark = [pytest.mark.redis]


def test_set_cookie_is_appended_after_the_apps_own_headers(redis_url: str) -> None:
    app_headers = ((b"content-type", b"text/plain"), (b"set-cookie", b"theme=dark; Path=/"))

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["session"]["n"] = 1
        await send({"type": "http.response.start", "status": 200, "headers": app_headers})
        await send({"type": "http.response.body", "body": b"ok"})

    async def body() -> tuple[list[dict[str, Any]], AsyncSessionStore]:
        store = AsyncSessionStore(redis_url, secret_keys=["k"], key_prefix="r10h" + uuid.uuid4().hex[:6])
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b"",
                 "client": ("127.0.0.1", 1), "server": ("test", 80), "scheme": "http"}
        try:
            await SessionMiddleware(app, store=store, cookie_name="sid")(scope, receive, send)
            return sent, store
        finally:
            await store.aclose()

    sent, store = asyncio.run(body())
    headers = sent[0]["headers"]
    assert isinstance(headers, list) and headers[:2] == list(app_headers)
    assert app_headers == ((b"content-type", b"text/plain"), (b"set-cookie", b"theme=dark; Path=/"))
    added = [v.decode("latin-1") for k, v in headers[2:]]
    assert [k for k, _ in headers[2:]] == [b"set-cookie"] and added[0].startswith("sid=")
    sid = store.unsign(added[0].split(";", 1)[0].removeprefix("sid="))
    assert sid is not None and sent[1]["body"] == b"ok"
