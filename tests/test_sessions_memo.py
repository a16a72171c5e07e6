"""A store's memo of verified cookies, ids' handles and signed ids (pure logic on
``memory://``): what it serves is what signing and verifying give, a forged cookie is
refused every time, an id the store would refuse is never made loadable by signing
it, and the memo stays bounded."""

from __future__ import annotations

import logging

import pytest

from statekit import sessions
from statekit.sessions import MEMO_SIZE, SessionStore, _handle_of


@pytest.fixture
def store() -> SessionStore:
    return SessionStore("memory://memo-test", secret_keys=["k-new", "k-old"])


def test_remembered_answers_are_the_computed_ones(store: SessionStore) -> None:
    s = store.create({"n": 1})
    cookie = store.sign(s.sid)
    assert cookie == store._signer.sign(s.sid).decode()  # itsdangerous's cookie, first key
    assert store.unsign(cookie) == s.sid
    assert store._handle(s.sid) == _handle_of(s.sid) == s.handle
    other = SessionStore("memory://memo-test", secret_keys=["k-new", "k-old"])  # nothing remembered
    assert other.unsign(cookie) == s.sid and other.sign(s.sid) == cookie
    opened = store.open(cookie)
    assert not opened.new and opened["n"] == 1


def test_a_forged_cookie_is_refused_every_time(store: SessionStore, caplog: pytest.LogCaptureFixture) -> None:
    s = store.create({"n": 1})
    cookie = store.sign(s.sid)
    store.open(cookie)  # remembered now
    forged = cookie[:-2] + ("AA" if cookie[-2:] != "AA" else "BB")
    with caplog.at_level(logging.WARNING, logger="statekit.security"):
        for _ in range(3):
            assert store.open(forged).new
    # refused (and counted) every time; logged once per kind per interval
    assert sum("bad signature" in r.getMessage() for r in caplog.records) == 1
    assert store.counters.get("rejected_cookies") == 3


def test_refused_cookies_are_logged_once_per_kind_per_interval(
        store: SessionStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Another app's cookie on the same domain, sent with every request, is refused
    every time but does not log a WARNING per request: one line per kind, then one
    per interval saying how many were not logged. Another kind still logs at once."""
    foreign_app = SessionStore("memory://memo-test", secret_keys=["another-apps-key"])
    other = foreign_app.sign(foreign_app.new().sid)  # signed, but not by this app's keys
    clock = [1000.0]
    monkeypatch.setattr(sessions.time, "monotonic", lambda: clock[0])
    with caplog.at_level(logging.WARNING, logger="statekit.security"):
        for _ in range(50):
            assert store.unsign(other) is None
        assert store.unsign(store.sign("not-an-id")) is None  # another kind: logged at once
        clock[0] += sessions.REJECT_LOG_INTERVAL
        assert store.unsign(other) is None
    lines = [r.getMessage() for r in caplog.records if r.name == "statekit.security"]
    assert len(lines) == 3, lines
    assert "bad signature" in lines[0] and "not logged" not in lines[0]
    assert "malformed id" in lines[1]
    assert "bad signature" in lines[2]
    assert "(49 more of this kind since the last such line, not logged)" in lines[2]
    assert store.counters.get("rejected_cookies") == 52


def test_signing_a_malformed_id_does_not_make_it_loadable(store: SessionStore,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    cookie = store.sign("not-an-id")
    with caplog.at_level(logging.WARNING, logger="statekit.security"):
        assert store.unsign(cookie) is None
    assert "malformed id" in caplog.text


def test_an_oversized_cookie_is_refused_even_when_remembered(store: SessionStore) -> None:
    s = store.create({"n": 1})
    cookie = store.sign(s.sid)
    assert store.unsign(cookie) == s.sid
    store.max_cookie_size = len(cookie) - 1
    assert store.unsign(cookie) is None


def test_the_memo_is_bounded(store: SessionStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sessions, "MEMO_SIZE", 8)
    ids = [store._new_id() for _ in range(20)]
    for sid in ids:
        assert store.unsign(store.sign(sid)) == sid
        assert store._handle(sid) == _handle_of(sid)
    assert 0 < len(store._verified) <= 8 and 0 < len(store._handles) <= 8 and 0 < len(store._signed) <= 8
    assert MEMO_SIZE >= 1024  # the real size: enough for the sessions a process serves at once


def test_new_ids_are_not_remembered(store: SessionStore) -> None:
    for _ in range(50):
        store.new()  # a request without a cookie: its id is never signed unless stored
    assert not store._handles and not store._verified
