"""Review 15, last read: msgpack reads ext type -1 as a Timestamp whatever ext format
carries it, not only the three heads msgpack writes (fixext 4, fixext 8, ext 8 of 12
bytes): ext 8 of 4 or 8 bytes, ext 16 and ext 32 of 4, 8 or 12 bytes too. The msgpack
codec looked for the three heads only, so those spellings of a Timestamp reached the
caller (cf8d668 refused the three). An ext 16 Timestamp planted as a cache entry on
a real Redis: tests/test_review15_aio_shared.py, test_a_timestamp_cache_entry_is_a_miss."""

from __future__ import annotations

import pytest

from statekit.errors import SerializationError

msgpack = pytest.importorskip("msgpack")

_BODY = {4: b"\x65\x53\xf1\x00", 8: b"\x00\x00\x00\x14\x65\x53\xf1\x00", 12: b"\x00\x00\x00\x05" + b"\x00" * 4
         + b"\x65\x53\xf1\x00"}


def _heads(size: int) -> list[bytes]:
    """Every ext header msgpack reads a *size*-byte ext -1 from, but the written ones."""
    return [b"\xc7" + bytes([size]) + b"\xff", b"\xc8\x00" + bytes([size]) + b"\xff",
            b"\xc9\x00\x00\x00" + bytes([size]) + b"\xff"]


_SPELLINGS = [head + _BODY[size] for size in (4, 8, 12) for head in _heads(size)
              if head != b"\xc7\x0c\xff"]


@pytest.mark.parametrize("stamp", _SPELLINGS, ids=lambda b: b[:3].hex())
def test_every_spelling_of_a_timestamp_is_refused(stamp: bytes) -> None:
    from statekit.serializers import MsgpackSerializer

    assert type(msgpack.unpackb(stamp)) is msgpack.Timestamp  # msgpack reads it as one
    codec = MsgpackSerializer()
    for payload in (stamp, b"\x92\x01" + stamp, b"\x81\xa1k" + stamp, b"\x81" + stamp + b"\x01"):
        with pytest.raises(SerializationError, match="Timestamp"):
            codec.loads(payload)

