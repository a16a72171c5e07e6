"""statekit.compat.cachelib.StatekitCache keeps cachelib's semantics."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pytest
from cachelib import BaseCache

from statekit.compat.cachelib import StatekitCache


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def cl(request: pytest.FixtureRequest) -> StatekitCache:
    url = "memory://cachelib" if request.param == "memory" else request.getfixturevalue("redis_url")
    return StatekitCache(url, default_timeout=60, key_prefix="app/")


def test_is_a_cachelib_cache(cl: StatekitCache) -> None:
    assert isinstance(cl, BaseCache)


def test_timeouts(cl: StatekitCache) -> None:
    assert cl.set("forever", 1, timeout=0)
    assert cl.cache.ttl("app/forever") == math.inf
    assert cl.set("default", 1)
    left = cl.cache.ttl("app/default")
    assert left is not None and 0 < left <= 60
    assert cl.set("td", 1, timeout=dt.timedelta(seconds=5))
    td_left = cl.cache.ttl("app/td")
    assert td_left is not None and td_left <= 5
    assert cl.set("gone", 1, timeout=-1)
    assert cl.get("gone") is None


def test_api(cl: StatekitCache) -> None:
    assert cl.add("a", 1) and not cl.add("a", 2)
    assert cl.get("a") == 1
    assert cl.set_many({"b": 2, "c": [3]}) == ["b", "c"]
    assert cl.get_many("a", "b", "zz") == [1, 2, None]
    assert cl.get_dict("a", "c") == {"a": 1, "c": [3]}
    assert cl.has("a") and not cl.has("zz")
    assert cl.inc("n") == 1 and cl.inc("n", 5) == 6 and cl.dec("n") == 5
    assert cl.delete("a") and not cl.delete("a")
    assert cl.delete_many("b", "c") == ["b", "c"]
    assert cl.get_many("b", "c") == [None, None]
    cl.set("x", 1)
    assert cl.clear()
    assert cl.get("x") is None


def test_key_prefix_isolates(cl: StatekitCache) -> None:
    other: Any = StatekitCache(cl.cache.url, key_prefix="other/")
    cl.set("k", 1)
    assert other.get("k") is None


def test_key_prefix_none_and_callable(redis_url: str) -> None:
    """cachelib's defaults: key_prefix=None (no prefix) and a callable prefix, called
    on every operation (a TypeError on every call before)."""
    plain: Any = StatekitCache(redis_url)
    assert plain.set("k", 1) and plain.get("k") == 1 and plain.cache.get("k") == 1
    tenant = ["a/"]
    scoped: Any = StatekitCache(redis_url, key_prefix=lambda: tenant[0])
    assert scoped.set("k", "for a") and scoped.cache.get("a/k") == "for a"
    tenant[0] = "b/"
    assert scoped.get("k") is None and scoped.set_many({"k": "for b"}) == ["k"]
    assert scoped.get_many("k") == ["for b"] and scoped.cache.get("b/k") == "for b"


class Tagging:
    """A cachelib-style serializer whose output shows it was used."""

    def dumps(self, value: Any) -> bytes:
        return b"tagged:" + str(value).encode()

    def loads(self, data: bytes | None) -> Any:
        return None if data is None else ("seen", data.decode())


@pytest.mark.redis
def test_an_injected_cachelib_serializer_is_used(redis_url: str) -> None:
    from cachelib.serializers import JSONSerializer

    cl: Any = StatekitCache(redis_url)
    cl.serializer = Tagging()  # what Flask-Caching does with CACHE_SERIALIZER
    assert isinstance(cl.serializer, Tagging)
    assert cl.set("k", 5.5) and cl.add("a", "x") and cl.set_many({"m": "y"}) == ["m"]
    assert cl.get("k") == ("seen", "tagged:5.5") and cl.get_many("a", "m") == [
        ("seen", "tagged:x"), ("seen", "tagged:y")]
    cl.serializer = JSONSerializer()
    assert cl.set("j", {"a": [1]}) and cl.get("j") == {"a": [1]}
    assert cl.inc("n", 2) == 2 and cl.get("n") == 2  # counters stay Redis integers

    class Subclass(StatekitCache):  # type: ignore[misc]
        serializer = Tagging()

    assert Subclass(redis_url).set("s", 1.5) and Subclass(redis_url).get("s") == ("seen", "tagged:1.5")


@pytest.mark.parametrize("name", ["RedisSerializer", "SimpleSerializer", "BaseSerializer"])
def test_cachelib_pickle_serializers_are_refused(name: str) -> None:
    import cachelib.serializers

    from statekit.errors import ConfigError

    cl: Any = StatekitCache("memory://cachelib")
    with pytest.raises(ConfigError, match="signed-pickle"):
        cl.serializer = getattr(cachelib.serializers, name)()


def test_an_unencodable_value_raises_pickle_error(cl: StatekitCache) -> None:
    """cachelib's BaseCache.set: "Pickling errors, however, will raise a subclass of
    pickle.PickleError"; statekit's SerializationError is kept too."""
    import pickle

    from statekit.errors import SerializationError

    for call in (lambda: cl.set("o", object()), lambda: cl.add("o", object()),
                 lambda: cl.set_many({"o": object()})):
        with pytest.raises(pickle.PickleError) as caught:
            call()
        assert isinstance(caught.value, SerializationError)
    assert cl.get("o") is None


def test_web_values_round_trip_without_pickle(cl: StatekitCache) -> None:
    """Responses, abort()s and template fragments: status, headers and body, or the
    rendered text; the plain JSON codec refuses the first two (a miss), nothing is unpickled."""
    from flask import Flask, abort, jsonify, make_response
    from markupsafe import Markup
    from werkzeug.exceptions import HTTPException, NotFound

    from statekit.errors import SerializationError
    from statekit.serializers import JSONSerializer, WebJSONSerializer

    with Flask(__name__).test_request_context():
        response = make_response("<p>hi</p>", 201, {"X-Extra": "1"})
        response.set_cookie("c", "v")
        assert cl.set("r", (jsonify(a=1), 202))
        assert cl.set("page", response)
        try:
            abort(404, description="no such thing")
        except HTTPException as e:
            assert cl.set("abort", e)
    body, status = cl.get("r")
    assert status == 202 and body.get_json() == {"a": 1} and body.mimetype == "application/json"
    page = cl.get("page")
    assert page.status_code == 201 and page.get_data() == b"<p>hi</p>"
    assert page.headers["X-Extra"] == "1" and page.headers["Set-Cookie"].startswith("c=v")
    exc = cl.get("abort")
    assert isinstance(exc, NotFound) and exc.description == "no such thing"
    assert b"no such thing" in exc.get_response().get_data()
    assert cl.set("frag", Markup("<b>x</b>"))
    frag = cl.get("frag")
    assert type(frag) is Markup and frag == "<b>x</b>"
    assert type(JSONSerializer().loads(WebJSONSerializer().dumps(Markup("<i>")))) is Markup  # sessions: too
    with pytest.raises(SerializationError):
        JSONSerializer().loads(WebJSONSerializer().dumps(page))
    with pytest.raises(SerializationError):  # a crafted payload is refused, not built
        WebJSONSerializer().loads(b'{"\\u0000":["rsp",[200,[],"x"]]}')


_WEB_TAGS = ["rsp", "hx", "mk", "b", "t", "m", "??"]


def _crafted() -> Any:
    from hypothesis import strategies as st

    leaves = st.none() | st.booleans() | st.integers() | st.text(max_size=6)
    return st.recursive(
        leaves,
        lambda inner: (st.lists(inner, max_size=3)
                       | st.builds(lambda tag, payload: {"\x00": [tag, payload]},
                                   st.sampled_from(_WEB_TAGS), inner)),
        max_leaves=8,
    )


def test_crafted_web_payloads_build_only_the_listed_classes() -> None:
    """Whatever a store writer crafts, the web codec refuses it cleanly or builds
    JSON values, a werkzeug Response, an HTTPException or Markup: no other class."""
    import json

    from hypothesis import given, settings
    from markupsafe import Markup
    from werkzeug.exceptions import HTTPException
    from werkzeug.wrappers import Response

    from statekit.errors import SerializationError
    from statekit.serializers import WebJSONSerializer

    codec = WebJSONSerializer()

    def allowed(value: Any) -> bool:
        if isinstance(value, (list, tuple, set, frozenset)):
            return all(allowed(v) for v in value)
        if isinstance(value, dict):
            return all(allowed(k) and allowed(v) for k, v in value.items())
        if isinstance(value, HTTPException):
            return value.response is None or type(value.response) is Response
        return type(value) in (type(None), bool, int, float, str, bytes, Markup, Response)

    @settings(max_examples=300, deadline=None)
    @given(doc=_crafted())
    def check(doc: Any) -> None:
        try:
            value = codec.loads(json.dumps(doc).encode())
        except SerializationError:
            return
        assert allowed(value), value

    check()


@pytest.mark.redis
def test_an_entry_the_injected_serializer_cannot_read_is_a_miss(redis_url: str) -> None:
    import ast

    class Literal:
        def dumps(self, value: Any) -> bytes:
            return repr(value).encode()

        def loads(self, data: bytes) -> Any:
            return ast.literal_eval(data.decode())

    cl: Any = StatekitCache(redis_url)
    cl.set("k", {"written": "as json"})
    cl.set("j", [True])  # JSON's true is no Python literal
    cl.serializer = Literal()
    assert cl.get("j") is None and cl.get_many("j", "k") == [None, {"written": "as json"}]
    assert cl.set("j", (1, 2)) and cl.get("j") == (1, 2)
    assert cl.cache.stats()["undecodable"] >= 2
