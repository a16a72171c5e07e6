"""A Starlette app whose sessions live in a module-level dict of each worker; an unknown
session answers 401 (tests/test_phoenix_review.py). No photos, no shared value."""

from __future__ import annotations

import os
import secrets
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

SESSIONS: dict[str, dict[str, str]] = {}


async def form(request: Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def login(request: Request) -> Response:
    user = (await form(request)).get("user")
    if not user:
        return PlainTextResponse("user?", status_code=400)
    sid = secrets.token_hex(8)
    SESSIONS[sid] = {}
    response = JSONResponse({"user": user})
    response.set_cookie("sid", sid)
    SESSIONS[sid]["\0user"] = user
    return response


async def session(request: Request) -> Response:
    stored = SESSIONS.get(request.cookies.get("sid", ""))
    if stored is None:
        return JSONResponse({"error": "login required"}, status_code=401)
    if request.method == "POST":
        data = await form(request)
        if "key" not in data:
            return PlainTextResponse("key?", status_code=400)
        stored[data["key"]] = data.get("value", "")
        return JSONResponse({"ok": True})
    values = {k: v for k, v in stored.items() if k != "\0user"}
    return JSONResponse({"user": stored["\0user"], "values": values, "pid": os.getpid()})


app = Starlette(routes=[Route("/healthz", healthz), Route("/api/login", login, methods=["POST"]),
                        Route("/api/session", session, methods=["GET", "POST"])])
