"""The "sign out this device" view, end to end on the suite's Redis: a signed-in user
revokes one of their sessions by the handle their device list showed
(``revoke_session(handle, user_id)``). A handle of another user's session (learnt
from a screenshot of a device list, a shared page, a guess) signs no one out: the
store checks the session's stored user in the destroy script itself. Flask (the sync
store) and Starlette (the async one), through their test clients."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from flask import Flask, jsonify, request, session
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from flask_statekit import StateKit, get_state
from starlette_statekit.sessions import SessionMiddleware, get_session_store, rotate_session

pytestmark = pytest.mark.redis

SECRET = "revoke-owner-test-secret-0123456789"


def flask_app(url: str) -> Flask:
    app = Flask(__name__)
    app.config.update({"SECRET_KEY": SECRET, "STATEKIT_SESSION_URL": url, "STATEKIT_CACHE_ENABLED": False,
                       "STATEKIT_BROADCAST_ENABLED": False,
                       "STATEKIT_KEY_PREFIX": "ro" + uuid.uuid4().hex[:10]})
    StateKit(app)
    store = get_state(app).sessions

    @app.get("/me")
    def me() -> Any:
        return jsonify(session.get("_user_id"))

    @app.get("/devices")
    def devices() -> Any:
        return jsonify([info.handle for info in store.list_user_sessions(session["_user_id"])])

    @app.post("/devices/sign-out")
    def sign_out() -> Any:
        return jsonify(store.revoke_session(request.form["handle"], session["_user_id"]))

    @app.post("/login/<user>")
    def login(user: str) -> Any:
        session.rotate()  # type: ignore[attr-defined]
        session["_user_id"] = user
        return "ok"

    return app


def test_flask_a_user_signs_out_their_own_device_only(redis_url: str) -> None:
    app = flask_app(redis_url)
    phone, laptop, mallory = app.test_client(), app.test_client(), app.test_client()
    for client, user in ((phone, "alice"), (laptop, "alice"), (mallory, "mallory")):
        assert client.post(f"/login/{user}").status_code == 200
    phone_handle, laptop_handle = laptop.get("/devices").json
    assert len(mallory.get("/devices").json) == 1
    answers = [mallory.post("/devices/sign-out", data={"handle": h}) for h in (phone_handle, laptop_handle)]
    assert phone.get("/me").json == "alice" and laptop.get("/me").json == "alice"
    assert [(a.status_code, a.json) for a in answers] == [(200, False)] * 2
    assert mallory.get("/me").json == "mallory"
    assert sorted(laptop.get("/devices").json) == sorted([phone_handle, laptop_handle])

    assert laptop.post("/devices/sign-out", data={"handle": phone_handle}).json is True
    assert phone.get("/me").json is None and laptop.get("/me").json == "alice"
    assert laptop.get("/devices").json == [laptop_handle]


async def _login(request: StarletteRequest) -> Response:
    await rotate_session(request)
    request.session["_user_id"] = request.path_params["user"]
    return JSONResponse("ok")


async def _me(request: StarletteRequest) -> Response:
    return JSONResponse(request.session.get("_user_id"))


async def _devices(request: StarletteRequest) -> Response:
    infos = await get_session_store(request).list_user_sessions(request.session["_user_id"])
    return JSONResponse([info.handle for info in infos])


async def _sign_out(request: StarletteRequest) -> Response:
    handle = (await request.form())["handle"]
    assert isinstance(handle, str)
    return JSONResponse(await get_session_store(request).revoke_session(handle, request.session["_user_id"]))


def test_starlette_a_user_signs_out_their_own_device_only(redis_url: str) -> None:
    routes = [Route("/login/{user}", _login, methods=["POST"]), Route("/me", _me),
              Route("/devices", _devices), Route("/devices/sign-out", _sign_out, methods=["POST"])]
    app = Starlette(routes=routes, middleware=[Middleware(
        SessionMiddleware, url=redis_url, secret_key=SECRET, key_prefix="ro" + uuid.uuid4().hex[:10])])

    def client() -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")

    async def main() -> None:
        async with client() as phone, client() as laptop, client() as mallory:
            for c, user in ((phone, "alice"), (laptop, "alice"), (mallory, "mallory")):
                assert (await c.post(f"/login/{user}")).status_code == 200
            phone_handle, laptop_handle = (await laptop.get("/devices")).json()
            answers = [await mallory.post("/devices/sign-out", data={"handle": h})
                       for h in (phone_handle, laptop_handle)]
            assert (await phone.get("/me")).json() == "alice" and (await laptop.get("/me")).json() == "alice"
            assert [(a.status_code, a.json()) for a in answers] == [(200, False)] * 2

            assert (await laptop.post("/devices/sign-out", data={"handle": phone_handle})).json() is True
            assert (await phone.get("/me")).json() is None and (await laptop.get("/me")).json() == "alice"
            assert (await laptop.get("/devices")).json() == [laptop_handle]

    asyncio.run(main())
