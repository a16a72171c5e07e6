"""Review 17 (the limits audit):
``STATEKIT_BLOBS_FORM_OVERHEAD`` is read at each upload with ``int()``, where its
sibling ``STATEKIT_BLOBS_MAX_SIZE`` takes a size: ``"1KiB"`` (the environment gives a
text) fails every upload with a ValueError (a 500), and a value that is no size
starts the app. The Flask adapter reads it once, as a size, at ``StateKit(app)``
(f1fee23)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from starlette_statekit import StateKit, get_state
from starlette_statekit.uploads import save_upload
from statekit.errors import ConfigError

NO_REDIS = {f"{f}_enabled": False for f in ("cache", "sessions", "broadcast")}


async def _upload(request: Request) -> PlainTextResponse:
    return PlainTextResponse((await save_upload(request, "file")).key)


def _app(overhead: Any) -> Starlette:
    app = Starlette(routes=[Route("/upload", _upload, methods=["POST"])])
    StateKit(app, config={"STATEKIT_BLOBS_URL": "memory://review17-starlette",
                          "STATEKIT_BLOBS_MAX_SIZE": "2KiB", "STATEKIT_BLOBS_FORM_OVERHEAD": overhead},
             **NO_REDIS)
    return app


@pytest.mark.parametrize("overhead", ["1KiB", "1024"])
def test_form_overhead_takes_a_size_as_the_max_size_does(overhead: str) -> None:
    app = _app(overhead)

    async def run() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            resp = await client.post("/upload", files={"file": ("t.csv", b"a,b\n1,2\n", "text/csv")})
        assert resp.status_code == 200, resp.text
        await get_state(app).shutdown()

    asyncio.run(asyncio.wait_for(run(), 30))


@pytest.mark.parametrize("overhead", ["lots", "-5"])
def test_a_form_overhead_that_is_no_size_fails_at_start(overhead: str) -> None:
    with pytest.raises(ConfigError, match="STATEKIT_BLOBS_FORM_OVERHEAD"):
        _app(overhead)
