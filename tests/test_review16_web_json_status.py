"""The web-json codec writes only what it reads back: a response or an HTTP exception
whose status no server sends (outside 100-599, RFC 9110 15; a status line with a line
break), or an exception whose description is not text, is refused on writing, with a
SerializationError at the caller, before any I/O. The reader has refused such an
entry since 09d67f9 (a miss), so it was stored, then missed on every read, the view
run again each time and the entry counted 'undecodable', for as long as it lived."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import pytest
import redis
from flask import Flask

from statekit.cache import AsyncCache, Cache
from statekit.errors import SerializationError, UnencodableValue
from statekit.serializers import WebJSONSerializer

werkzeug_exceptions = pytest.importorskip("werkzeug.exceptions")
werkzeug_wrappers = pytest.importorskip("werkzeug.wrappers")
HTTPException = werkzeug_exceptions.HTTPException
Response = werkzeug_wrappers.Response


class _Huge(HTTPException):  # type: ignore[misc, valid-type]
    code = 10**30


class _Tiny(HTTPException):  # type: ignore[misc, valid-type]
    code = 99


def _unservable() -> list[Any]:
    """Values werkzeug builds and the codec's reader refuses (each refused before this
    change by reading only)."""
    return [Response("x", status=1000), Response("x", status=99), Response("x", status=600),
            Response("x", status=0), Response("x", status="abc"),  # werkzeug: '0 abc'
            Response("x", status="200 OK\r\nX-Injected: 1"), Response("x", status="1000 Big"),
            _Huge("d"), _Tiny("d"), werkzeug_exceptions.BadRequest(description={"field": "bad"}),
            {"page": Response("x", status=1000)}, [_Huge("d")]]


_IDS = ["1000", "99", "600", "0", "abc", "line-break", "1000-reason", "hx-10**30", "hx-99",
        "hx-dict-description", "nested-in-dict", "nested-in-list"]


@pytest.mark.parametrize("index", range(len(_IDS)), ids=_IDS)
def test_the_codec_refuses_on_writing_what_it_refuses_on_reading(index: int) -> None:
    value = _unservable()[index]
    with pytest.raises(SerializationError, match="cannot serialize"):
        WebJSONSerializer().dumps(value)


@pytest.mark.parametrize("code", [100, 200, 302, 404, 418, 599])
def test_statuses_within_http_are_still_written_and_read(code: int) -> None:
    codec = WebJSONSerializer()
    back = codec.loads(codec.dumps(Response("body", status=f"{code} Some\tReason")))
    assert back.status == f"{code} Some\tReason" and back.get_data() == b"body"

    class Custom(HTTPException):  # type: ignore[misc, valid-type]
        pass

    Custom.code = code
    exc = codec.loads(codec.dumps(Custom("described")))
    assert isinstance(exc, HTTPException) and exc.code == code and exc.description == "described"


@pytest.mark.redis
def test_cache_set_refuses_before_any_write(redis_url: str) -> None:
    """Cache.set, set_many, add and get_or_set raise the SerializationError and write
    nothing (the key stays as it was)."""
    namespace = f"review16-web-{uuid.uuid4().hex}"
    cache = Cache(redis_url, namespace=namespace, serializer=WebJSONSerializer())
    admin = redis.Redis.from_url(redis_url)
    try:
        cache.set("kept", "before")
        for value in _unservable():
            for write in (lambda v=value: cache.set("kept", v), lambda v=value: cache.add("new", v),
                          lambda v=value: cache.set_many({"kept": v, "other": 1}),
                          lambda v=value: cache.get_or_set("new", lambda v=v: v)):
                with pytest.raises(SerializationError, match="cannot serialize"):
                    write()
        assert cache.get("kept") == "before" and cache.get("new") is None and cache.get("other") is None
        assert sorted(k.decode().rsplit(":", 1)[-1] for k in admin.scan_iter(match=f"*{namespace}*:*")
                      if not k.decode().endswith(":gen")) == ["kept"]
        assert cache.stats()["undecodable"] == 0
    finally:
        cache.close()
        admin.close()


@pytest.mark.redis
def test_async_cache_set_refuses_before_any_write(redis_url: str) -> None:
    namespace = f"review16-web-{uuid.uuid4().hex}"

    async def body() -> None:
        cache = AsyncCache(redis_url, namespace=namespace, serializer=WebJSONSerializer())
        try:
            await cache.set("kept", "before")
            for value in _unservable():
                with pytest.raises(SerializationError, match="cannot serialize"):
                    await cache.set("kept", value)
                with pytest.raises(SerializationError, match="cannot serialize"):
                    await cache.add("new", value)
            assert await cache.get("kept") == "before" and await cache.get("new") is None
            assert await cache.set("fine", Response("ok", status=201)) is True
            back = await cache.get("fine")
            assert back.status_code == 201 and back.get_data() == b"ok"
        finally:
            await cache.aclose()

    asyncio.run(body())


@pytest.mark.redis
def test_flask_caching_serves_the_view_and_caches_nothing(redis_url: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Through Flask-Caching's @cached view on statekit's cachelib backend (the
    documented configuration): the view's answer is served, not stored, and the reason
    logged (Flask-Caching catches a failed set and logs it, raising only in debug): an
    UnencodableValue, cachelib's pickle.PickleError. It was stored, then missed on
    every request."""
    from flask_caching import Cache as FlaskCache

    namespace = f"review16-web-{uuid.uuid4().hex}"
    app = Flask("review16")
    fc = FlaskCache(app, config={"CACHE_TYPE": "statekit.compat.cachelib.StatekitCache",
                                 "CACHE_OPTIONS": {"url": redis_url, "namespace": namespace}})
    calls: list[str] = []

    @app.get("/odd")
    @fc.cached(timeout=60)
    def odd() -> Any:
        calls.append("odd")
        return Response("odd", status=1000)

    client = app.test_client()
    admin = redis.Redis.from_url(redis_url)
    try:
        with caplog.at_level(logging.ERROR, logger="flask_caching"):
            assert client.get("/odd").status_code == 1000
            assert client.get("/odd").status_code == 1000
        assert calls == ["odd", "odd"]
        stored = [k for k in admin.scan_iter(match=f"*{namespace}*") if not k.endswith(b":gen")]
        assert stored == []
        refused = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], UnencodableValue)]
        assert len(refused) == 2 and "not an HTTP status" in str(refused[0].exc_info[1])  # type: ignore[index]
    finally:
        admin.close()
        fc.cache.cache.close()
