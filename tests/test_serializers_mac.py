"""The signed-pickle codec's prepared HMAC (``statekit.serializers._Mac``) gives the
bytes ``hmac.new(key, body, hashlib.sha256)`` gives, so the stored format is the one
every earlier version wrote and reads."""

from __future__ import annotations

import hashlib
import hmac
import pickle
from concurrent.futures import ThreadPoolExecutor

from hypothesis import given, settings
from hypothesis import strategies as st

from statekit.serializers import SignedPickleSerializer, _derive, _Mac


@settings(max_examples=300, deadline=None)
@given(key=st.binary(min_size=1, max_size=200), body=st.binary(max_size=3000))
def test_prepared_mac_is_hmac_sha256(key: bytes, body: bytes) -> None:
    """Keys shorter than, as long as and longer than SHA-256's 64-byte block."""
    assert _Mac(key)(body) == hmac.new(key, body, hashlib.sha256).digest()
    assert _Mac(key)(memoryview(body)) == hmac.new(key, body, hashlib.sha256).digest()


@settings(max_examples=100, deadline=None)
@given(value=st.recursive(st.none() | st.integers() | st.text() | st.binary(),
                          lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=20))
def test_payloads_are_the_format_hmac_new_signed(value: object) -> None:
    """What the codec writes is ``hmac.new(derived key, pickle) + pickle`` (the format
    before the prepared MAC), and it reads such a payload back, old key included."""
    codec = SignedPickleSerializer(["new-key", "old-key"])
    body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    assert codec.dumps(value) == hmac.new(_derive("new-key"), body, hashlib.sha256).digest() + body
    for key in ("new-key", "old-key"):
        assert codec.loads(hmac.new(_derive(key), body, hashlib.sha256).digest() + body) == value


def test_one_prepared_mac_serves_every_thread() -> None:
    """The prepared hashes are only copied: threads signing at once get each their own
    message's MAC."""
    mac = _Mac(b"k" * 32)
    bodies = [str(i).encode() * (i % 50 + 1) for i in range(2000)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(mac, bodies))
    assert got == [hmac.new(b"k" * 32, b, hashlib.sha256).digest() for b in bodies]
