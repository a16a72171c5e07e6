"""Review (issues 17/18) of the session cookie memo (c6c0f09): what a store remembers
never makes a cookie acceptable that verifying it would refuse, and an attacker holding
one valid cookie cannot fill or churn the memo with variants of it."""

from __future__ import annotations

import json
import threading

import pytest

from statekit import sessions
from statekit.errors import SerializationError
from statekit.sessions import SessionStore


def _store(*keys: str) -> SessionStore:
    return SessionStore("memory://review10-memo", secret_keys=keys or ("k-new", "k-old"))


def _cookie_of_new_session(store: SessionStore) -> tuple[str, str]:
    sid = store.create({"n": 1}).sid
    return sid, store.sign(sid)


def test_a_valid_cookie_with_bytes_added_is_refused_and_not_remembered() -> None:
    # itsdangerous decodes the signature leniently (non-alphabet characters dropped,
    # any padding accepted): these verify, but no store ever issued them
    store = _store()
    sid, cookie = _cookie_of_new_session(store)
    assert store.unsign(cookie) == sid
    remembered = len(store._verified)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    unused_bit = cookie[:-1] + alphabet[alphabet.index(cookie[-1]) + 1]  # the same 32 bytes
    variants = [cookie + "!!", cookie + "==", cookie + "=", cookie + "!" * 9, unused_bit]
    for variant in variants:
        assert _store().unsign(variant) is None, variant
        assert store.unsign(variant) is None, variant
        assert store.open(variant).new
    assert len(store._verified) == remembered
    assert store.unsign(cookie) == sid


def test_truncated_and_other_key_cookies_are_refused_after_the_real_one_is_remembered() -> None:
    store = _store()
    sid, cookie = _cookie_of_new_session(store)
    assert store.unsign(cookie) == sid and store.unsign(cookie.encode()) == sid
    for bad in (cookie[:-1], cookie[:-5], cookie[:48], sid, cookie + "A"):
        assert store.unsign(bad) is None, bad
        assert store.unsign(bad.encode()) is None, bad
    other = _store("another")
    foreign = other.sign(sid)  # the same id, signed with a key this store does not hold
    assert other.unsign(foreign) == sid
    assert store.unsign(foreign) is None
    old = _store("k-old").sign(sid)
    assert store.unsign(old) == sid  # still accepted where k-old is held, remembered
    assert _store("k-new").unsign(old) is None  # k-old retired


def test_the_memo_stays_right_under_threads_clearing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sessions, "MEMO_SIZE", 4)  # cleared again and again while read
    store = _store()
    ids = [store._new_id() for _ in range(16)]
    cookies = [_store("k-new").sign(i) for i in ids]
    wrong: list[tuple[str, str | None]] = []

    def work(offset: int) -> None:
        for n in range(400):
            k = (n + offset) % len(ids)
            if store.sign(ids[k]) != cookies[k]:
                wrong.append((ids[k], "sign"))
            got = store.unsign(cookies[k])
            if got != ids[k]:
                wrong.append((ids[k], got))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
    assert len(store._verified) <= 4 + len(threads) and len(store._signed) <= 4 + len(threads)


@pytest.mark.redis
@pytest.mark.parametrize("payload", [
    {"\x00": ["u", 5]},  # uuid.UUID(5): AttributeError
    {"\x00": ["td", [1e300, 0, 0]]},  # timedelta: OverflowError
], ids=["uuid", "timedelta"])
def test_a_corrupt_stored_value_is_a_serialization_error(redis_url: str, payload: object) -> None:
    # the store's shared JSON decoder caught fewer errors than the json codec it stands
    # in for: a value the codec refuses with SerializationError escaped as a raw error
    import redis

    store = SessionStore(redis_url, secret_keys=["k"], key_prefix="review10-corrupt")
    try:
        session = store.create({"k": 1, "other": 2})
        with redis.Redis.from_url(redis_url) as raw:
            assert raw.hexists(store._key(session.sid), "d:k")
            raw.hset(store._key(session.sid), "d:k", json.dumps(payload))
        opened = store.open(store.sign(session.sid))
        assert opened["other"] == 2
        with pytest.raises(SerializationError, match="session key 'k': stored value cannot be decoded"):
            opened["k"]
    finally:
        store.close()
