"""Configuration and client creation reviewed again (review 15): a database number the
server does not have is configuration, not an outage."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from statekit.cache import Cache
from statekit.config import Settings, parse_url
from statekit.embedded import RedisServer
from statekit.errors import BackendUnavailable, ConfigError
from statekit.lifecycle import Lifecycle
from statekit.pytest_plugin import server_lines
from statekit.redis import create_client

# -- a database the server does not have ------------------------------------------------


@pytest.fixture(scope="module", params=server_lines(), ids=lambda b: b.line)
def four_dbs(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """A Redis with 4 databases (0-3), and a user 'app' (password 'Pw-15-secret') that
    may not run CONFIG, as on a managed Redis; each server line."""
    srv = RedisServer(request.param, args=["--databases", "4"])
    srv.start()
    with srv.client() as r:
        r.execute_command("ACL", "SETUSER", "app", "on", ">Pw-15-secret", "~*", "&*", "+@all", "-config")
    yield srv
    srv.stop()


@pytest.mark.redis
@pytest.mark.parametrize("where", ["/5", "?db=5", "/5?protocol=3"])
def test_a_database_the_server_does_not_have_is_a_config_error(four_dbs: RedisServer, where: str) -> None:
    """SELECT 5 on a server of 4 databases: the first command raises a ConfigError
    naming the database and the server's limit, again on every call, and the circuit
    breaker stays closed (it was a BackendUnavailable 'Redis refused a cache command':
    a 503 'try again'). Database 3 works."""
    base = f"redis://127.0.0.1:{four_dbs.port}"
    cache = Cache(base + where)
    for _ in range(cache.breaker.failure_threshold + 2):
        with pytest.raises(ConfigError) as e:
            cache.get("k")
        assert not isinstance(e.value, BackendUnavailable)
        assert "database 5" in str(e.value) and "it has 4, 0 to 3" in str(e.value)
    assert cache.breaker.state == "closed"
    with pytest.raises(ConfigError, match="database 5"):
        create_client(base + where).ping()  # redis-py's own path too
    good = Cache(base + "/3")
    good.set("k", 1)
    assert good.get("k") == 1


@pytest.mark.redis
def test_readyz_says_the_database_does_not_exist(four_dbs: RedisServer) -> None:
    """/readyz (the lifecycle's readiness answer): 503 naming the configuration error,
    not 'Redis unavailable'."""
    lifecycle = Lifecycle(settings=Settings(redis_url=f"redis://127.0.0.1:{four_dbs.port}/7"))
    status, body = lifecycle.readiness()
    assert status == 503
    assert body["checks"]["redis"].startswith("ConfigError: the Redis URL names database 7")
    assert "it has 4, 0 to 3" in body["checks"]["redis"]


@pytest.mark.redis
def test_a_server_that_refuses_config_still_gets_a_config_error(four_dbs: RedisServer) -> None:
    """A user without CONFIG (a managed Redis): the limit cannot be read, the error
    still names the database, and not the password."""
    with pytest.raises(ConfigError) as e:
        create_client(f"redis://app:Pw-15-secret@127.0.0.1:{four_dbs.port}/9").ping()
    text = str(e.value)
    assert "database 9" in text and "refused the SELECT" in text
    assert "Pw-15" not in text and "secret" not in text
    ok = create_client(f"redis://app:Pw-15-secret@127.0.0.1:{four_dbs.port}/2")
    assert ok.ping() is True


@pytest.mark.redis
@pytest.mark.sentinel
def test_sentinel_a_database_the_master_does_not_have(sentinel_url: str) -> None:
    """redis+sentinel://.../service/99: the master's handshake refuses it, a
    ConfigError too (16 databases by default)."""
    url = sentinel_url.rsplit("/", 1)[0] + "/99"
    with pytest.raises(ConfigError, match=r"database 99, .* it has 16, 0 to 15"):
        Cache(url).get("k")


@pytest.mark.redis
def test_async_a_database_the_server_does_not_have(four_dbs: RedisServer) -> None:
    """The same on the asyncio side: AsyncCache's first command and every one after
    raise the ConfigError naming the database and the limit (a BackendUnavailable
    before), the breaker stays closed; a user without CONFIG gets it too, without the
    password; a raw client made by create_async_client the same; database 3 works."""
    from statekit.cache.aio import AsyncCache
    from statekit.redis.aio import create_async_client

    base = f"redis://127.0.0.1:{four_dbs.port}"

    async def main() -> None:
        cache = AsyncCache(base + "/5")
        try:
            for _ in range(cache.breaker.failure_threshold + 2):
                with pytest.raises(ConfigError) as e:
                    await cache.get("k")
                assert not isinstance(e.value, BackendUnavailable)
                assert "database 5" in str(e.value) and "it has 4, 0 to 3" in str(e.value)
            assert cache.breaker.state == "closed"
        finally:
            await cache.aclose()
        client = create_async_client(f"redis://app:Pw-15-secret@127.0.0.1:{four_dbs.port}/9?protocol=3")
        try:
            with pytest.raises(ConfigError) as e:
                await client.ping()
            text = str(e.value)
            assert "database 9" in text and "refused the SELECT" in text
            assert "Pw-15" not in text and "secret" not in text
        finally:
            await client.aclose()
        good = AsyncCache(base + "/3")
        try:
            await good.set("k", 1)
            assert await good.get("k") == 1
        finally:
            await good.aclose()

    asyncio.run(main())


@pytest.mark.redis
@pytest.mark.sentinel
def test_async_sentinel_a_database_the_master_does_not_have(sentinel_url: str) -> None:
    """redis+sentinel://.../service/99 on the asyncio side: a ConfigError too."""
    from statekit.cache.aio import AsyncCache

    async def main() -> None:
        cache = AsyncCache(sentinel_url.rsplit("/", 1)[0] + "/99")
        try:
            with pytest.raises(ConfigError, match=r"database 99, .* it has 16, 0 to 15"):
                await cache.get("k")
        finally:
            await cache.aclose()

    asyncio.run(main())


# -- ssl_check_hostname -------------------------------------------------------------------


@pytest.mark.redis
def test_ssl_check_hostname_false_reaches_a_server_by_a_name_its_certificate_lacks(
        server: RedisServer, tmp_path: Path) -> None:
    """The suite's TLS Redis (a TLS proxy whose certificate names 127.0.0.1 only)
    reached as 'localhost', as a managed Redis through a tunnel: refused with the
    host name checked (the default), served with ?ssl_check_hostname=false, sync and
    asyncio. The certificate is still verified: another CA's is refused."""
    from test_redis_helpers import self_signed, tls_url

    from statekit.cache.aio import AsyncCache

    with tls_url(server, tmp_path) as url:
        by_name = url.replace("://127.0.0.1:", "://localhost:") + "&ssl_cert_reqs=required"
        with pytest.raises(BackendUnavailable, match="Hostname mismatch"):
            Cache(by_name).get("k")
        cache = Cache(by_name + "&ssl_check_hostname=false")
        cache.set("tls-k", 1)
        assert cache.get("tls-k") == 1

        async def main() -> object:
            return await AsyncCache(by_name + "&ssl_check_hostname=0").get("tls-k")

        assert asyncio.run(main()) == 1
        (tmp_path / "other").mkdir()
        other_ca, _ = self_signed(tmp_path / "other")
        cert = url.partition("ssl_ca_certs=")[2]
        with pytest.raises(BackendUnavailable, match="certificate verify failed"):
            Cache(by_name.replace(cert, other_ca) + "&ssl_check_hostname=false").get("k")


def test_ssl_check_hostname_is_a_boolean_of_rediss_urls() -> None:
    """Parsed as the other boolean options; refused where it does nothing (not TLS,
    or with ssl_cert_reqs=none, which verifies nothing: redis-py drops the check)."""
    assert parse_url("rediss://h/0?ssl_check_hostname=FALSE").options["ssl_check_hostname"] is False
    assert parse_url("rediss://h/0?ssl_check_hostname=on").options["ssl_check_hostname"] is True
    with pytest.raises(ConfigError, match="option ssl_check_hostname='nope' must be true or false"):
        parse_url("rediss://h/0?ssl_check_hostname=nope")
    with pytest.raises(ConfigError, match="'ssl_check_hostname' needs a rediss:// URL"):
        parse_url("redis://h/0?ssl_check_hostname=false")
    with pytest.raises(ConfigError, match="ssl_cert_reqs=none does not verify"):
        parse_url("rediss://h/0?ssl_cert_reqs=none&ssl_check_hostname=true")
    assert parse_url("rediss://h/0?ssl_cert_reqs=none&ssl_check_hostname=false").options == {
        "ssl_cert_reqs": "none", "ssl_check_hostname": False}


def test_every_url_option_is_in_the_settings_reference() -> None:
    """docs/settings.md's URL options table (statekit.settings_reference.URL_OPTIONS)
    lists exactly the options parse_url takes, each for the URLs that take it: an
    option added without its line fails here (ssl_check_hostname had none anywhere)."""
    from statekit.config import _OPTION_TABLES, _SCHEME_ONLY
    from statekit.settings_reference import URL_OPTIONS

    kinds = {"redis": "Redis", "s3": "`s3://`", "file": "`file://`"}
    for scheme, kind in kinds.items():
        documented = {o.name: o.urls for o in URL_OPTIONS
                      if o.urls.startswith(kind) or (kind == "Redis" and o.urls.startswith("`red"))}
        assert set(documented) == set(_OPTION_TABLES[scheme]), scheme
        for name, urls in documented.items():
            only = _SCHEME_ONLY.get(name) if scheme == "redis" else None
            assert urls.startswith(f"`{only}://`" if only else kind), name


# -- no part of a password in any URL error ---------------------------------------------

#: passwords as pasted, each with a character a URL cuts at ('?', '#', '/', '&') or an
#: '@'; 'Pw15' and 'SECRET' must never be shown
_PASSWORDS = ["Pw15?db=3SECRET", "Pw15?SECRET", "Pw15#SECRET", "Pw15/SECRET", "Pw15?socket_timeout=1SECRET",
              "Pw15?password=xSECRET", "Pw15?db=3&x=SECRET", "Pw15@SECRET", "Pw15?x&db=1SECRET",
              "Pw15?client_name=SECRET", "Pw15?db=3&password=SECRET", "Pw15?db=3ss"]
#: what follows the '@': good, and each fault a Redis URL's parse reports
_AFTER = ["h:6379/0", "h/0", "h:6379", "h/0?db=2", "h/0?socket_timeout=abc", "h/0?bogus=1", "h:99999/0",
          "h/x", "h/0/1", "h,h2/0", "h/0#frag", "h/0?db=1&db=2", "h/0?ssl_ca_certs=/x", "h/0?a=1=2&&",
          "h/0?health_check_interval=5", "h/9999999", ""]


def _shown(url: str) -> list[str]:
    """What parse_url and Settings show of *url*: their error, or the parsed URL's
    repr and redacted form."""
    out = []
    for make in (lambda: parse_url(url), lambda: Settings(redis_url=url)):
        try:
            made = make()
        except ConfigError as e:
            out.append(str(e))
        else:
            out.append(repr(made) + (made.redacted() if hasattr(made, "redacted") else ""))
    return out


def _every_url() -> list[str]:
    urls = []
    for scheme in ("redis", "rediss", "redis+sentinel", "redis+cluster"):
        for pw in _PASSWORDS:
            for after in _AFTER:
                after = after.replace("/", "/svc/", 1) if scheme == "redis+sentinel" else after
                urls += [f"{scheme}://:{pw}@{after}", f"{scheme}://user:{pw}@{after}"]
                if "client_name=" not in pw and "password=" not in pw:
                    # 'secret@host' without the ':' means a password too; but after a
                    # raw '?' an option that may hold an '@' (client_name=a@b, password=)
                    # reads as that option (a valid URL: tests/test_readthrough14.py)
                    urls.append(f"{scheme}://{pw}@{after}")
        for pw in ("Pw15&SECRET", "Pw15@SECRET", "Pw15#SECRET", "Pw15?SECRET"):
            for extra in ("", "&socket_timeout=abc", "&bogus=1", "&db=x"):
                urls += [f"{scheme}://h/0?password={pw}{extra}", f"{scheme}://h/0?db=x&password={pw}{extra}"]
    for pw in _PASSWORDS:
        urls += [f"unix://:{pw}@/run/r.sock?db=x", f"unix://:{pw}@/run/r.sock", f"s3://AK:{pw}@bucket/p",
                 f"s3://AK:{pw}@bucket/p?region=a_b", f"redis:/:{pw}@h/0", f"redsi://:{pw}@h/0",
                 f"file://:{pw}@localhost/srv"]
    return urls


def test_no_url_error_shows_any_part_of_a_password() -> None:
    """Every URL error path (a bad option, an unknown or repeated one, a malformed
    query, a bad host, port or database, a fragment, an unknown scheme, no '://')
    with passwords that hold the characters a URL cuts at: no error, repr or
    redacted form shows 'Pw15' or 'SECRET'. 'redis://:pa?db=3ss@host/0' said
    "option db='3ss@host/0' is not a whole number"; 'redis://user:Pw15?db=3&password=
    SECRET@h/0?bogus=1' "port 'Pw15' of host 'user'"; a '#' in ?password= showed its
    tail; 'redis:/:Pw15@h/0' (a slash short) the whole password."""
    leaks = [(url, text) for url in _every_url() for text in _shown(url)
             if "Pw15" in text or "SECRET" in text]
    assert not leaks, f"{len(leaks)} leaks, e.g. {leaks[:3]}"


def test_a_cut_password_is_told_how_to_write_it() -> None:
    """The brief's example: a password with a raw '?db=' gets the cut-userinfo
    message (write '?' as %3F), not an error about option db; the valid readings of
    an '@' in an option's value stay valid."""
    with pytest.raises(ConfigError, match="%3F") as e:
        parse_url("redis://:pa?db=3ss@host/0")
    assert "3ss" not in str(e.value) and "'redis://***@host/0'" in str(e.value)
    assert parse_url("redis://:pa%3Fdb%3D3ss@host/0").password == "pa?db=3ss"
    assert parse_url("redis://h:6379/0?password=s3cr@t").password == "s3cr@t"
    assert parse_url("unix:///run/r.sock?password=s3cr@t").password == "s3cr@t"
    with pytest.raises(ConfigError, match="%23"):
        parse_url("redis://h/0?password=pa#ss")


# -- a URL pasted with spaces, given directly ----------------------------------------------


@pytest.mark.redis
@pytest.mark.parametrize("make", ["Cache", "SessionStore", "Broadcaster"])
def test_a_redis_url_with_spaces_around_it_given_directly(redis_url: str, make: str) -> None:
    """' redis://...\\n' as pasted from an env file: Settings and the adapters strip
    it, parse_url too; given to a constructor it was 'no cache backend for   redis://
    URLs' (the backend picked by the text's scheme): now by the stripped one."""
    url = f"  {redis_url}\n"
    if make == "Cache":
        cache = Cache(url)
        cache.set("spaced", 1)
        assert cache.get("spaced") == 1
    elif make == "SessionStore":
        from statekit.sessions import SessionStore

        assert SessionStore(url, secret_keys=["k" * 32]).new().new
    else:
        from statekit.broadcast import Broadcaster

        Broadcaster(url).stop()


def test_a_blob_url_with_spaces_around_it_given_directly(tmp_path: Path) -> None:
    from statekit.blobs.store import BlobStore

    store = BlobStore(f" file://{tmp_path}\n")
    blob = store.put(io.BytesIO(b"spaced"), filename="a.txt")
    with store.open(blob.key) as f:
        assert f.read() == b"spaced"
