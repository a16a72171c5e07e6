"""Per-request fast paths of sessions (pure logic): the cookie signer matches
itsdangerous's Signer byte for byte, save's reuse of assignment-time encodings never
stores a stale value, and the Flask adapter's Vary merging keeps other values."""

from __future__ import annotations

import hashlib

import pytest
from itsdangerous import BadSignature, Signer

from statekit.sessions import _SALT, SessionStore, _CookieSigner


def _its(keys: list[bytes]) -> Signer:
    # itsdangerous signs with its *last* key: give it the keys oldest first
    return Signer(list(reversed(keys)), salt=_SALT, key_derivation="hmac", digest_method=hashlib.sha256)


@pytest.mark.parametrize("value", ["a", "0123" + "x" * 43, "ünï", ""])
def test_same_cookies_as_itsdangerous(value: str) -> None:
    keys = [b"newest-key", b"older-key"]
    ours, theirs = _CookieSigner(keys), _its(keys)
    assert ours.sign(value) == theirs.sign(value)
    assert ours.unsign(theirs.sign(value)) == value.encode()
    assert ours.unsign(theirs.sign(value).decode()) == value.encode()
    old_only = _its([b"older-key"]).sign(value)  # key rotation: the older key still verifies
    assert ours.unsign(old_only) == value.encode()
    assert theirs.unsign(old_only) == value.encode()


@pytest.mark.parametrize("cookie", [b"", b"nodot", b"value.", b"value.!!!!", b"value.AAAA",
                                    b"v." + b"A" * 43, "välue.abc"])
def test_rejects_what_itsdangerous_rejects(cookie: bytes | str) -> None:
    keys = [b"k1", b"k2"]
    assert _CookieSigner(keys).unsign(cookie) is None
    with pytest.raises(BadSignature):
        _its(keys).unsign(cookie)


def test_tampering_any_byte_is_rejected() -> None:
    signer, theirs = _CookieSigner([b"k"]), _its([b"k"])
    good = signer.sign("0123abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ")
    for i in range(len(good) - 1):  # the last base64 digit carries 2 unused bits (as in itsdangerous)
        bad = good[:i] + bytes([good[i] ^ 1]) + good[i + 1:]
        assert signer.unsign(bad) is None
        with pytest.raises(BadSignature):
            theirs.unsign(bad)


def test_in_place_change_after_assignment_is_saved() -> None:
    store = SessionStore("memory://signer-test", secret_keys=["k"])
    s = store.create({"n": 1})
    s["n"] = 2  # immutable: the assignment's encoding is reused
    s["cart"] = ["apple"]
    s["cart"].append("pear")  # mutable: encoded again at save
    store.save(s)
    loaded = store.load(s.sid)
    assert loaded is not None and dict(loaded) == {"n": 2, "cart": ["apple", "pear"]}


def test_flask_vary_cookie_keeps_other_vary_values() -> None:
    from flask import Response

    from flask_statekit.sessions import _vary_cookie

    plain, other, already = Response("x"), Response("x"), Response("x")
    other.headers["Vary"] = "Accept-Encoding"
    already.headers["Vary"] = "cookie, Accept"
    for r in (plain, other, already):
        _vary_cookie(r)
    assert plain.headers["Vary"] == "Cookie"
    assert other.headers["Vary"] == "Accept-Encoding, Cookie"
    assert already.headers["Vary"] == "cookie, Accept"


def test_one_secret_key_given_as_a_string_is_one_key() -> None:
    """``secret_keys="..."`` is one key, not one per character (a one-letter key would
    let anyone forge a session id)."""
    store = SessionStore("memory://signer-one-key", secret_keys="a-long-secret-key-0123456789")
    sid = store.new().sid
    cookie = store.sign(sid)
    assert store.unsign(cookie) == sid
    forged = Signer("a", salt=_SALT, key_derivation="hmac", digest_method=hashlib.sha256).sign(sid)
    assert store.unsign(forged) is None
    assert store.unsign(Signer("a-long-secret-key-0123456789", salt=_SALT, key_derivation="hmac",
                                digest_method=hashlib.sha256).sign(sid)) == sid


def test_a_session_id_is_the_whole_string() -> None:
    from statekit.sessions import _ID_RE

    sid = SessionStore("memory://signer-id", secret_keys=["k" * 32]).new().sid
    assert _ID_RE.match(sid)
    assert not _ID_RE.match(sid + "\n") and not _ID_RE.match(sid + "x") and not _ID_RE.match(sid[:-1])


def test_tampered_changes_the_signature_itself() -> None:
    """statekit.testing.tampered changes a character the signature's bytes depend on:
    for every cookie of 2,000, the tampered one is refused (replacing the last two
    characters was not: their padding bits do not count)."""
    import pytest

    from statekit.sessions import SessionStore
    from statekit.testing import tampered

    store = SessionStore("memory://", secret_keys=["tamper-secret"])
    for _ in range(2000):
        good = store.sign(store.new().sid)
        assert store.unsign(good) is not None
        assert store.unsign(tampered(good)) is None
    with pytest.raises(ValueError):
        tampered("abc")
