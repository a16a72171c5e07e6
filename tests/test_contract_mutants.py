"""Mutation review of the shipped contract suites (statekit.testing.contracts): each
backend below has ONE plausible bug a third-party author could make, and the
contract of its capability must fail on it.

The mutants subclass a working backend: the dict cache of tests/test_cache_thirdparty.py
(a pure-Python backend, as a third party writes one; statekit's memory:// cache runs
the Redis backend's plans, which a subclass cannot break one method at a time), the
sqlite session engine of examples/sqlite_sessions, and the memory:// blob and
broadcast backends. Each is registered by entry point under a scheme of its own, and
one pytest subprocess runs the whole contract on every mutant (a generated module: a
contract subclass per mutant); its JUnit report must show a failure in every class.

That run is ~1,250 tests that mostly wait (TTLs running out, lock timeouts, threads
racing through WINDOW): in one process, 56 s of wall time for 11 s of CPU. It runs in
INNER_WORKERS pytest-xdist workers, every test as before (19 s, 16 s of CPU).
"""

from __future__ import annotations

import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import test_cache_thirdparty as dict_cache  # tests/ is on sys.path (rootdir-relative test modules)

from statekit.blobs.memory import MemoryBackend as MemoryBlobs
from statekit.blobs.memory import _MemoryWriter
from statekit.blobs.protocol import BlobPage, BlobWriter, WriteRequest
from statekit.broadcast.memory import MemoryBackend as MemoryBroadcast
from statekit.broadcast.protocol import Claim, ClaimStatus, Record
from statekit.cache.protocol import Stored
from statekit.errors import BlobExists, SessionError
from statekit.serializers import get_serializer
from statekit.sessions.protocol import IndexOp, Result, Status

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "sqlite_sessions" / "src"))
from statekit_sqlite_sessions import RANGES, SQLiteEngine  # noqa: E402 - the example is not installed here

#: the window a non-atomic read-then-write leaves open (a network round trip)
WINDOW = 0.02
#: pytest-xdist workers of the generated run (its tests mostly sleep: 4 cut its wall
#: time by two thirds on 2 cores; 6 did not cut it further)
INNER_WORKERS = 4


# -- cache mutants (on the dict backend) ------------------------------------------------

class _Cache(dict_cache.DictCacheBackend):
    @classmethod
    def from_url(cls, url: str, base: str, options: Mapping[str, Any]) -> dict_cache.DictCacheBackend:
        return cls(dict_cache._stores.setdefault(url, dict_cache._Store()), base)

    def namespace(self, base: str) -> dict_cache.DictCacheBackend:
        return type(self)(self.store, base)


class CacheTTLIgnored(_Cache):
    def set(self, key: str, value: bytes, ttl_ms: int | None) -> None:
        super().set(key, value, None)


class CacheTTLInSeconds(_Cache):
    """Read the milliseconds as seconds (a factor of 1000)."""

    def set(self, key: str, value: bytes, ttl_ms: int | None) -> None:
        super().set(key, value, None if ttl_ms is None else ttl_ms * 1000)


class CacheAddNotAtomic(_Cache):
    """add as a get, then a set."""

    def add(self, key: str, value: bytes, ttl_ms: int | None) -> bool:
        if self.get_with_ttl(key).value is not None:
            return False
        time.sleep(WINDOW)
        self.set(key, value, ttl_ms)
        return True


class CacheDeleteAlwaysTrue(_Cache):
    def delete(self, key: str) -> bool:
        super().delete(key)
        return True


class CacheIncrAlwaysCreates(_Cache):
    def incr(self, key: str, delta: int, ttl_ms: int | None, *, create: bool) -> int | None:
        return super().incr(key, delta, ttl_ms, create=True)


class CacheIncrLosesUpdates(_Cache):
    """incr as a read, then a write (range checks kept)."""

    def incr(self, key: str, delta: int, ttl_ms: int | None, *, create: bool) -> int | None:
        found = self.get_with_ttl(key)
        if found.value is None:
            return super().incr(key, delta, ttl_ms, create=create)
        time.sleep(WINDOW)
        value = int(found.value) + delta
        if delta not in dict_cache._INT64 or value not in dict_cache._INT64:
            raise ValueError("increment or decrement would overflow")
        self.set(key, b"%d" % value, found.ttl_ms)
        return value


class CacheIncrDropsTTL(_Cache):
    """incr of an existing key rewrites it without its TTL (a new key gets its TTL)."""

    def incr(self, key: str, delta: int, ttl_ms: int | None, *, create: bool) -> int | None:
        existed = self.get_with_ttl(key).value is not None
        value = super().incr(key, delta, ttl_ms, create=create)
        if value is not None and existed:
            self.set(key, b"%d" % value, None)
        return value


class CacheClearIsANoop(_Cache):
    def clear(self) -> None:
        return None


class CacheClearWipesEveryNamespace(_Cache):
    def clear(self) -> None:
        with self.store.lock:
            self.store.data = {k: v for k, v in self.store.data.items() if "}:lock:" in k}


class CacheTouchMissingIsTrue(_Cache):
    def touch(self, key: str, ttl_ms: int | None, now: float, stale_ms: int) -> bool:
        super().touch(key, ttl_ms, now, stale_ms)
        return True


class CacheReleaseIgnoresToken(_Cache):
    def release_lock(self, name: str, token: str) -> bool:
        with self.store.lock:
            return self.store.data.pop(f"{self.base}lock:{name}", None) is not None


class CacheGetWithTTLInSeconds(_Cache):
    """get_with_ttl reports the time left in seconds."""

    def get_with_ttl(self, key: str) -> Stored:
        found = super().get_with_ttl(key)
        return found if found.ttl_ms is None else Stored(found.value, found.ttl_ms // 1000)


# -- session engine mutants (on the sqlite example) ----------------------------------------

class _Sessions(SQLiteEngine):
    @classmethod
    def from_url(cls, url: str, *, key_prefix: str = "statekit", counters: Any = None,
                 **options: Any) -> SQLiteEngine:
        return cls(url.partition("://")[2], key_prefix)


class SessionsRotateSkipsIndex(_Sessions):
    def rotate(self, old: str, new: str, alias_ms: int, index: IndexOp | None) -> Result:
        return super().rotate(old, new, alias_ms, None)


class SessionsRevokeUserLeavesOne(_Sessions):
    """revoke_user stops one short (the newest session survives)."""

    def revoke_user(self, user: str, keep: str) -> int:
        with self._tx("session revoke") as conn:
            now = time.time()
            members = [m for (m,) in conn.execute(
                "SELECT member FROM user_index WHERE user = ? AND member != ? ORDER BY score",
                (self._p + user, keep))][:-1]
            for m in members:
                self._drop(conn, self._p + m, now)
                conn.execute("DELETE FROM user_index WHERE user = ? AND member = ?", (self._p + user, m))
            return len(members)


class SessionsListsExpired(_Sessions):
    """list_user goes by the index alone, not by the sessions' expiry."""

    def list_user(self, user: str, since: float) -> list[tuple[str, Mapping[str, bytes]]]:
        sql = ("SELECT i.member, f.field, f.value FROM user_index i "
               "JOIN fields f ON f.key = ? || i.member AND f.field IN ('m:c', 'm:s', 'm:u', 'm:i') "
               "WHERE i.user = ? AND i.score >= ? ORDER BY i.score, i.member")
        with self._tx("session list", "BEGIN") as conn:
            rows = conn.execute(sql, (self._p, self._p + user, since)).fetchall()
        found: dict[str, dict[str, bytes]] = {}
        for member, field, value in rows:
            found.setdefault(member, {})[field] = value
        return [(m, fields) for m, fields in found.items() if "m:c" in fields]


class SessionsLateSaveResurrects(_Sessions):
    """A save of a session that is gone writes it anew."""

    def write(self, handle: str, *, create: bool, sets: Mapping[str, bytes], dels: Sequence[str],
              ttl_ms: int, index: IndexOp | None) -> Result:
        result = super().write(handle, create=create, sets=sets, dels=dels, ttl_ms=ttl_ms, index=index)
        if result.status is Status.GONE:
            return super().write(handle, create=True, sets={"m:c": b"0", **sets}, dels=dels, ttl_ms=ttl_ms,
                                 index=index)
        return result


class SessionsOwnerCheckSkipped(_Sessions):
    def destroy(self, handle: str, user: str | None, check_user: bool = False) -> Result:
        return super().destroy(handle, user)


class SessionsIncrNotAtomic(_Sessions):
    """incr as a read (an increment by 0, which checks the value), then a write."""

    def incr(self, handle: str, field: str, amount: int, codec: str) -> Result:
        read = super().incr(handle, field, 0, codec)
        if read.status is not Status.DONE:
            return read
        low, high = RANGES[codec]
        value = read.value + amount
        if not low <= value <= high:
            raise SessionError(f"cannot increment session key {field[2:]!r}: out of range")
        time.sleep(WINDOW)
        key = self._p + handle
        with self._tx("session incr") as conn:
            head = self._head(conn, key, time.time())
            if (gone := self._gone(head)) is not None:
                return gone
            conn.execute("INSERT OR REPLACE INTO fields VALUES (?, ?, ?)",
                         (key, field, get_serializer(codec).dumps(value)))
            return Result(Status.DONE, version=self._bump(conn, key, head), value=value)


class SessionsClaimNotAtomic(_Sessions):
    def claim(self, name: str, value: bytes, ttl_ms: int) -> bytes | None:
        taken = self.peek(name)
        if taken is not None:
            return taken
        time.sleep(WINDOW)
        with self._tx("session claim") as conn:
            conn.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?)",
                         (name, value, time.time() + ttl_ms / 1000))
        return None


# -- blob mutants (on memory://) ----------------------------------------------------------

class _Blobs(MemoryBlobs):
    def __init__(self, url: str | None = None, **options: Any) -> None:
        super().__init__(name=(url or "").partition("://")[2])


class _VisibleWhileWriting(BlobWriter):
    def __init__(self, store: Any, req: WriteRequest) -> None:
        self._store, self._req, self._data = store, req, b""

    def write(self, data: bytes) -> None:
        if not self._data and not self._store.add(self._req.key, (data, self._req, "")):
            raise BlobExists(f"a blob already exists under {self._req.key!r}")
        self._data += data
        self._store.set(self._req.key, (self._data, self._req, ""))

    def commit(self, sha256: str, size: int) -> None:
        if not self._data and not self._store.add(self._req.key, (b"", self._req, sha256)):
            raise BlobExists(f"a blob already exists under {self._req.key!r}")
        self._store.set(self._req.key, (self._data, self._req, sha256))

    def abort(self) -> None:
        self._data = b""


class BlobsPartialVisible(_Blobs):
    """Each part is visible as it comes (a write-through store), and an abort
    leaves it there."""

    def writer(self, req: WriteRequest) -> BlobWriter:
        return _VisibleWhileWriting(self._objects, req)


class _Overwriting(_MemoryWriter):
    def commit(self, sha256: str, size: int) -> None:
        self._store.set(self._req.key, (b"".join(self._parts), self._req, sha256))


class BlobsOverwrite(_Blobs):
    def writer(self, req: WriteRequest) -> BlobWriter:
        return _Overwriting(self._objects, req)


class _Spooling(BlobWriter):
    def __init__(self, store: Any, req: WriteRequest) -> None:
        self._store, self._req, self._spool = store, req, req.key + ".part"

    def write(self, data: bytes) -> None:
        old = self._store.get(self._spool)
        self._store.set(self._spool, ((old[0] if old else b"") + data, self._req, ""))

    def commit(self, sha256: str, size: int) -> None:
        spooled = self._store.get(self._spool)
        self._store.delete(self._spool)
        if not self._store.add(self._req.key, (spooled[0] if spooled else b"", self._req, sha256)):
            raise BlobExists(f"a blob already exists under {self._req.key!r}")

    def abort(self) -> None:
        self._store.delete(self._spool)


class BlobsListsIncompleteWrites(_Blobs):
    """A write spools its parts to an object beside the key (deleted on commit and
    on abort), which listings show while the write goes on."""

    def writer(self, req: WriteRequest) -> BlobWriter:
        return _Spooling(self._objects, req)


class BlobsDeleteAlwaysTrue(_Blobs):
    def delete(self, key: str) -> bool:
        super().delete(key)
        return True


class BlobsListSkipsOnePerPage(_Blobs):
    """The cursor is the last key of the page plus one: the next page starts one late."""

    def list_page(self, prefix: str, cursor: str | None, page_size: int) -> BlobPage:
        page = super().list_page(prefix, cursor, page_size)
        if page.cursor is None:
            return page
        following = super().list_page(prefix, page.cursor, 1).items
        return BlobPage(page.items, following[0].key if following else page.cursor)


class BlobsOpenIgnoresMissing(_Blobs):
    """stat of a missing key returns an empty blob instead of BlobNotFound."""

    def open(self, key: str) -> BinaryIO:
        import io

        obj = self._objects.get(key)
        return io.BytesIO(b"" if obj is None else obj[0])


# -- broadcast mutants (on memory://) -------------------------------------------------------

class _Broadcast(MemoryBroadcast):
    @classmethod
    def from_url(cls, url: str, *, prefix: str) -> MemoryBroadcast:
        return cls(url.partition("://")[2], prefix=prefix)


class BroadcastTwoHolders(_Broadcast):
    """A claim of a lease another owner holds is granted anyway."""

    def claim(self, name: str, owner: str, lease_ms: int, slot: int) -> Claim:
        got = super().claim(name, owner, lease_ms, slot)
        if got.status is ClaimStatus.HELD:
            return Claim(ClaimStatus.COMPUTE if slot >= 0 else ClaimStatus.LEADER, got.token + 1)
        return got


class BroadcastPublishIgnoresToken(_Broadcast):
    def publish(self, name: str, payload: bytes, *, token: int | None, now_ms: int) -> int:
        return super().publish(name, payload, token=None, now_ms=now_ms)


class BroadcastRenewIgnoresToken(_Broadcast):
    def renew(self, name: str, owner: str, token: int, lease_ms: int) -> bool:
        return True


class BroadcastReadsItsFirstAnswer(_Broadcast):
    """read() keeps the first record it got of each name (a local cache that never
    learns of later publishes: what a reader sees moves backwards)."""

    def read(self, names: Iterable[str]) -> dict[str, Record]:
        memo: dict[str, Record] = self.__dict__.setdefault("_memo", {})
        wanted = list(names)
        fresh = super().read([n for n in wanted if n not in memo])
        memo.update(fresh)
        return {n: memo[n] for n in wanted if n in memo}


MUTANTS: dict[str, list[type]] = {
    "cache": [CacheTTLIgnored, CacheTTLInSeconds, CacheAddNotAtomic, CacheDeleteAlwaysTrue,
              CacheIncrAlwaysCreates, CacheIncrLosesUpdates, CacheIncrDropsTTL, CacheClearIsANoop,
              CacheClearWipesEveryNamespace, CacheTouchMissingIsTrue, CacheReleaseIgnoresToken,
              CacheGetWithTTLInSeconds],
    "sessions": [SessionsRotateSkipsIndex, SessionsRevokeUserLeavesOne, SessionsListsExpired,
                 SessionsLateSaveResurrects, SessionsOwnerCheckSkipped, SessionsIncrNotAtomic,
                 SessionsClaimNotAtomic],
    "blobs": [BlobsPartialVisible, BlobsListsIncompleteWrites, BlobsOverwrite, BlobsDeleteAlwaysTrue,
              BlobsListSkipsOnePerPage, BlobsOpenIgnoresMissing],
    "broadcast": [BroadcastTwoHolders, BroadcastPublishIgnoresToken, BroadcastRenewIgnoresToken,
                  BroadcastReadsItsFirstAnswer],
}

HEADER = '''
import sys, uuid
from importlib.metadata import EntryPoint
import pytest
sys.path.insert(0, {tests!r})
import test_contract_mutants as m
from statekit import backends
from statekit.blobs import BlobStore
from statekit.cache import Cache
from statekit.testing.contracts.blobs import BlobStoreContract
from statekit.testing.contracts.broadcast import BroadcastContract
from statekit.testing.contracts.cache import CacheContract
from statekit.testing.contracts.sessions import SessionEngineContract

MUTANTS = {{cap: {{cls.__name__.lower(): cls for cls in classes}} for cap, classes in m.MUTANTS.items()}}

@pytest.fixture(autouse=True)
def mutant_entry_points(monkeypatch):
    points = {{cap: [EntryPoint(name, "test_contract_mutants:" + cls.__name__, "statekit." + cap)
                    for name, cls in found.items()] for cap, found in MUTANTS.items()}}
    monkeypatch.setattr(backends, "_entry_points", lambda capability: points.get(capability, []))
'''

FIXTURES = {
    "cache": ("CacheContract", "    @pytest.fixture\n    def make(self):\n"
              "        url = '{scheme}://' + uuid.uuid4().hex\n"
              "        return lambda **kw: Cache(url, **kw)\n"),
    "sessions": ("SessionEngineContract", "    @pytest.fixture\n    def session_url(self, tmp_path):\n"
                 "        return f'{scheme}://{{tmp_path}}/s.db'\n"),
    "blobs": ("BlobStoreContract", "    @pytest.fixture\n    def store(self):\n"
              "        with BlobStore('{scheme}://' + uuid.uuid4().hex) as s:\n            yield s\n"),
    "broadcast": ("BroadcastContract", "    @pytest.fixture\n    def broadcast_url(self):\n"
                  "        return '{scheme}://' + uuid.uuid4().hex\n"),
}


def _module() -> str:
    parts = [HEADER.format(tests=str(ROOT / "tests"))]
    for cap, classes in MUTANTS.items():
        base, fixture = FIXTURES[cap]
        for cls in classes:
            scheme = cls.__name__.lower()
            parts.append(f"\nclass Test{cls.__name__}({base}):\n" + fixture.format(scheme=scheme))
    return "".join(parts)


def test_every_mutant_fails_its_contract(tmp_path: Path) -> None:
    """One pytest run of the contract on every mutant; each mutant's class has at
    least one failed test, and no error outside the tests (a mutant that did not load
    would fail for the wrong reason)."""
    (tmp_path / "test_generated_mutants.py").write_text(_module())
    report = tmp_path / "report.xml"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
         "--rootdir", str(tmp_path), f"--junitxml={report}", "test_generated_mutants.py",
         "-n", str(INNER_WORKERS), "--dist", "load",
         # a publish that ignores its token makes this test wait out its 30 s timeout;
         # two other tests catch that mutant at once
         "-k", "not (PublishIgnoresToken and paused_leader)"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    output = result.stdout[-20000:] + result.stderr[-5000:]
    assert report.exists(), output
    failed: dict[str, list[str]] = {}
    passed: dict[str, int] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        cls = case.get("classname", "").rpartition(".")[2].removeprefix("Test")
        errors = case.findall("error")
        assert not errors, f"{cls}::{case.get('name')} errored, not failed: {errors[0].get('message')}"
        if case.find("failure") is not None:
            failed.setdefault(cls, []).append(str(case.get("name")))
        elif case.find("skipped") is None:
            passed[cls] = passed.get(cls, 0) + 1
    every = [cls.__name__ for classes in MUTANTS.values() for cls in classes]
    uncaught = [name for name in every if name not in failed]
    assert not uncaught, f"the contract passes on {uncaught}\n{output}"
    assert all(passed.get(name, 0) > 0 for name in every), (passed, output)  # the mutant ran
    print({name: failed[name] for name in every})
