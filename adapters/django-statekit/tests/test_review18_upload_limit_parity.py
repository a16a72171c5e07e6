"""Review 18: the three adapters answer the same too-big upload the same way.

One multipart body, sent to Flask's ``save_upload``, Starlette's ``save_upload`` and
a Django view saving to ``BlobStorage`` behind ``BlobUploadLimitMiddleware``, each
with a 1 MiB limit and the default 64 KiB form overhead: 413 for a body whose
``Content-Length`` passes limit + overhead (Flask and Django read none of it), 413
for a file past the limit within the overhead, 200 for a file of the limit.
(Django answered 500 to both, after reading the whole body.)"""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from flask import Flask, jsonify
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from test_review18_django_upload_limit import _MIDDLEWARE, BOUNDARY, LIMIT, MiB, _Body, _post

from statekit.blobs import BlobStore

CASES = [pytest.param(48 * MiB, 413, id="body-past-limit-and-overhead"),
         pytest.param(LIMIT + 60 * 1024, 413, id="file-past-limit-within-overhead"),
         pytest.param(LIMIT, 200, id="file-of-the-limit")]
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def _flask(url: str, body: _Body) -> int:
    from flask_statekit import StateKit
    from flask_statekit.blobs import save_upload

    app = Flask(__name__)
    app.config.update(STATEKIT_BLOBS_URL=url, STATEKIT_BLOBS_MAX_SIZE=LIMIT, SECRET_KEY="x" * 32,
                      **{f"STATEKIT_{f}_ENABLED": False for f in ("CACHE", "SESSIONS", "BROADCAST")})
    StateKit(app)

    @app.post("/upload")
    def upload() -> Any:
        return jsonify(size=save_upload("file").size)

    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/upload", "SERVER_NAME": "testserver",
               "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
               "wsgi.input": io.BufferedReader(body), "wsgi.errors": io.StringIO(),
               "CONTENT_TYPE": CONTENT_TYPE, "CONTENT_LENGTH": str(body.total)}
    statuses: list[str] = []
    response = app.wsgi_app(environ, lambda status, headers, exc_info=None: statuses.append(status))
    b"".join(response)
    getattr(response, "close", lambda: None)()
    return int(statuses[0].split()[0])


def _starlette(url: str, body: _Body) -> int:
    from starlette_statekit import StateKit, get_state
    from starlette_statekit.uploads import save_upload

    async def upload(request: Request) -> PlainTextResponse:
        return PlainTextResponse((await save_upload(request, "file")).key)

    app = Starlette(routes=[Route("/upload", upload, methods=["POST"])])
    StateKit(app, config={"STATEKIT_BLOBS_URL": url, "STATEKIT_BLOBS_MAX_SIZE": str(LIMIT)},
             cache_enabled=False, sessions_enabled=False, broadcast_enabled=False)

    async def chunks() -> AsyncIterator[bytes]:
        while data := body.read(MiB):
            yield data

    async def run() -> int:
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                resp = await client.post("/upload", content=chunks(), headers={
                    "content-type": CONTENT_TYPE, "content-length": str(body.total)})
            return resp.status_code
        finally:
            await get_state(app).shutdown()

    return asyncio.run(asyncio.wait_for(run(), 60))


@pytest.mark.parametrize(("size", "status"), CASES)
def test_the_three_adapters_answer_the_same(django_settings: Any, size: int, status: int) -> None:
    url = f"memory://review18-parity-{uuid.uuid4().hex}"
    store = BlobStore(url)
    django_settings.set(
        STORAGES={"default": {"BACKEND": "django_statekit.storage.BlobStorage",
                              "OPTIONS": {"store": store, "max_size": LIMIT}},
                  "staticfiles": {"BACKEND": "django.core.files.storage.InMemoryStorage"}},
        MIDDLEWARE=_MIDDLEWARE)
    bodies = {name: _Body(size) for name in ("flask", "starlette", "django")}
    answers = {"flask": _flask(url, bodies["flask"]), "starlette": _starlette(url, bodies["starlette"]),
               "django": _post(bodies["django"])[0]}
    assert answers == dict.fromkeys(answers, status)
    if size > LIMIT + 64 * 1024:  # refused on its Content-Length: nothing read
        assert bodies["flask"].served == bodies["django"].served == 0
    assert len(list(store.list())) == (3 if status == 200 else 0)
