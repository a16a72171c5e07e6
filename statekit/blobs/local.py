"""``file:///shared/volume/path`` blob store: a directory, typically a shared volume.

Layout under the root::

    2026/11/22/9f0c...e1.png            the blob, under its key
    .statekit/meta/<key>.json           its record (type, filename, sha256, metadata)
    .statekit/pending/<key>             policy of an unconfirmed direct upload (a blob)
    <dir>/.tmp-XXXX                     a write in progress (removed on abort)

A write goes to a temporary file in the destination directory, is fsynced, and is
then *linked* into place (``os.link`` fails if the name exists, so nothing is ever
overwritten; a filesystem without hard links falls back to an ``O_EXCL`` placeholder
and ``os.replace``). Keys are validated and the resolved path must stay inside the
root, so symlinks cannot lead a write outside it.

The record goes in place first, then the blob, so a visible blob always has its
record. Its writer holds an exclusive ``flock`` on the record from before it is
visible until the blob is linked or the record removed: a record with no blob whose
lock is free was left by a writer that died between the two (the kernel released the
lock), and the next write of that key, or :meth:`LocalBackend.cleanup_partial`, removes
it instead of refusing the key until the record is a day old. A delete unlinks the
blob, then removes its record the same way, as an orphan: a write of the same key
committing meanwhile keeps its record (see :meth:`LocalBackend.delete`); then the
directories it emptied go, as S3 keeps none (a write makes its directory again). (A network volume
needs working ``flock``: NFS's, which Linux maps to byte-range locks, is. Those are
the process's, not the open file's, so the records this process's threads are
writing are also kept in a set that is checked first.)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import mimetypes
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

from ..config import parse_url
from ..errors import BackendUnavailable, BlobExists, BlobNotFound, ConfigError, InvalidKey
from .protocol import META_SHA256, Blob, BlobBackend, BlobPage, BlobWriter, WriteRequest, stored_blob

__all__ = ["LocalBackend"]

_TMP = ".tmp-"
#: the records this process's writers hold (see the module docstring) -> their lock's fd
_held: dict[str, int] = {}
_held_lock = threading.Lock()


def _let_go_in_child() -> None:
    """In a forked child: the records the parent's writers hold are not the child's.
    Its copies of their lock descriptors are closed (a ``flock`` belongs to the open
    file, which the child shared: it kept the parent's records locked for its whole
    life, so a record of a parent that died mid-write looked written to until then).
    The fork waits for the lock (``before``), so the table and the descriptors agree:
    a writer closes its descriptor and leaves the table under it."""
    global _held_lock
    _held_lock = threading.Lock()
    for fd in _held.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(before=lambda: _held_lock.acquire(), after_in_parent=lambda: _held_lock.release(),
                    after_in_child=_let_go_in_child)
_INTERNAL = ".statekit"
#: the longest a delete waits for the writer of its key's record (see LocalBackend._drop_record)
_RECORD_WAIT = 5.0
_PENDING = _INTERNAL + "/pending/"  # the façade's markers of pending direct uploads
#: how often a write makes its directory again when deletes keep removing it (_mkstemp)
_MKSTEMP_TRIES = 10


def _oserror(e: OSError, what: str) -> BackendUnavailable:
    err = BackendUnavailable(f"filesystem error while {what}: {e.strerror or e}")
    err.__cause__ = e
    return err


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _empty(path: str) -> bool:
    """Whether the file *path* exists and is empty."""
    try:
        return os.stat(path).st_size == 0
    except OSError:
        return False


def _link_exclusive(src: str, dst: str) -> None:
    """Make *src* visible as *dst* unless *dst* exists (then :class:`FileExistsError`)."""
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
        fd = os.open(dst, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)  # claim the name
        os.close(fd)
        try:
            os.replace(src, dst)
        except BaseException:  # never leave the empty claim visible as the blob
            with contextlib.suppress(OSError):
                os.unlink(dst)
            raise
        return
    os.unlink(src)


class _LocalWriter(BlobWriter):
    def __init__(self, store: LocalBackend, req: WriteRequest) -> None:
        self._store = store
        self._req = req
        self._final = store._path(req.key)
        self._meta_final: str | None = None
        self._meta_lock: int | None = None  # an fd holding the flock on our record
        try:
            fd, self._tmp = store._mkstemp(os.path.dirname(self._final))
        except OSError as e:
            raise _oserror(e, f"creating a file for {req.key!r}") from e
        try:
            os.fchmod(fd, store.file_mode)  # may fail on some network filesystems
            self._file: Any = os.fdopen(fd, "wb")
        except OSError as e:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)
            raise _oserror(e, f"creating a file for {req.key!r}") from e

    def write(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as e:
            raise _oserror(e, f"writing {self._req.key!r}") from e

    def commit(self, sha256: str, size: int) -> None:
        req = self._req
        try:
            self._file.flush()
            if self._store.fsync:
                os.fsync(self._file.fileno())
            self._file.close()
            record = {"content_type": req.content_type, "created": req.created.isoformat(),
                      "metadata": dict(req.metadata, **{META_SHA256: sha256}), "size": size}
            meta_path = self._store._meta_path(req.key)
            self._meta_lock = self._store._write_json(meta_path, record, claim_for=self._final)
            self._meta_final = meta_path
            _link_exclusive(self._tmp, self._final)
            self._meta_final = None
            self._release()
            if self._store.fsync:
                _fsync_dir(os.path.dirname(self._final))
        except FileExistsError:
            raise BlobExists(f"a blob already exists under {req.key!r}") from None
        except OSError as e:
            raise _oserror(e, f"committing {req.key!r}") from e

    def _release(self) -> None:
        if self._meta_lock is not None:
            lock, self._meta_lock = self._meta_lock, None
            with _held_lock:
                _held.pop(self._store._meta_path(self._req.key), None)
                os.close(lock)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)
        if self._meta_final is not None:  # removed under our lock: no one else's record
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._meta_final)
        self._release()


class LocalBackend(BlobBackend):
    """Blobs in a directory (``file:///srv/uploads?fsync=true&file_mode=0640``).

    The directory must exist: a missing root is a :class:`~statekit.errors.ConfigError`
    at construction (a typo, or a shared volume that is not mounted), unless
    ``?create=1`` (or ``create=True``) asks for it to be created; a root that is not a
    directory (a regular file) is one in any case. A root that vanishes
    later is an outage (:class:`~statekit.errors.BackendUnavailable`), never recreated.

    Several processes and machines may share the directory (a network volume with
    POSIX hard links and ``O_EXCL``). Failure: ``OSError`` becomes
    :class:`~statekit.errors.BackendUnavailable`; a write that fails leaves only a
    ``.tmp-`` file at worst (a crash), removed by :meth:`cleanup_incomplete`.
    """

    scheme = "file"

    def __init__(self, url: str | None = None, *, root: str | os.PathLike[str] | None = None,
                 fsync: bool | None = None, file_mode: int | None = None, create: bool | None = None) -> None:
        parsed_opts: dict[str, Any] = {}
        if url is not None:
            parsed = parse_url(url, kinds=("file",))
            root = root or parsed.path
            parsed_opts = dict(parsed.options)
        if root is None:
            raise ConfigError("LocalBackend needs a file:// URL or root=")
        self.root = os.path.realpath(os.fspath(root))
        self.fsync = fsync if fsync is not None else parsed_opts.get("fsync", True)
        self.file_mode = file_mode if file_mode is not None else parsed_opts.get("file_mode", 0o640)
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise ConfigError(f"the file:// store root {self.root} is not a directory; "
                              "point the URL at a directory")
        if create if create is not None else parsed_opts.get("create", False):
            try:
                os.makedirs(self.root, exist_ok=True)
            except OSError as e:
                raise ConfigError(f"cannot create the store root {self.root}: {e.strerror or e}") from e
        elif not os.path.isdir(self.root):
            # a typo or an unmounted volume: writing into a new directory here would keep
            # the uploads on this machine only, so refuse to start instead
            raise ConfigError(
                f"the file:// store root {self.root} does not exist (is the volume mounted?); "
                "create it, or add ?create=1 to the URL to have statekit create it"
            )
        self._adopt_old_markers()

    def describe(self) -> str:
        return f"file://{self.root}"

    def _adopt_old_markers(self) -> None:
        """Pending direct uploads that earlier versions recorded as
        ``.statekit/pending/<key>.json`` move to ``.statekit/pending/<key>``, where the
        store looks for them, so confirm() still checks an upload received before an
        upgrade (direct-upload keys have no extension: the rename is unambiguous).
        Done at start, before every listing of the pending uploads, and when a marker
        is read and missing: during a rolling deploy, workers of the earlier version
        keep recording markers the old way after this one started."""
        for dirpath, _dirs, names in os.walk(os.path.join(self.root, _INTERNAL, "pending")):
            for name in names:
                if name.endswith(".json") and not name.startswith("."):
                    self._adopt_old_marker(os.path.join(dirpath, name[:-5]))

    @staticmethod
    def _adopt_old_marker(path: str) -> None:
        """Move the old-layout marker ``<path>.json`` to *path* unless *path* exists."""
        with contextlib.suppress(OSError):
            _link_exclusive(path + ".json", path)

    # -- paths ---------------------------------------------------------------------
    def _check_inside(self, path: str) -> str:
        real = os.path.realpath(path)
        if real != self.root and not real.startswith(self.root + os.sep):
            raise InvalidKey(f"path {path!r} resolves outside the store root")
        return real

    def _check_root(self) -> None:
        if not os.path.isdir(self.root):
            raise BackendUnavailable(f"the store root {self.root} is missing (is the volume mounted?)")

    def _makedirs(self, directory: str) -> None:
        """``os.makedirs`` that first checks the deepest existing ancestor resolves
        inside the root, so a planted symlink cannot make it create directories elsewhere.
        A missing root is an outage (an unmounted volume), never recreated: writing into
        an empty mount point would keep the file on this machine only."""
        self._check_root()
        existing = directory
        while not os.path.isdir(existing):
            existing = os.path.dirname(existing)
        self._check_inside(existing)
        os.makedirs(directory, exist_ok=True)
        self._check_inside(directory)

    def _mkstemp(self, directory: str) -> tuple[int, str]:
        """A new temporary file in *directory*, made (:meth:`_makedirs`) if missing:
        ``mkstemp``'s ``(fd, path)``. A delete removes the directories it empties
        (:meth:`_prune`), so one may go between the two steps: it is made again."""
        for _ in range(_MKSTEMP_TRIES - 1):
            self._makedirs(directory)
            try:
                return tempfile.mkstemp(prefix=_TMP, dir=directory)
            except FileNotFoundError:
                continue  # emptied and removed by a delete meanwhile
        self._makedirs(directory)
        return tempfile.mkstemp(prefix=_TMP, dir=directory)

    def _prune(self, directory: str, top: str) -> None:
        """Remove *directory* and its parents below *top* while they are empty, as S3
        has no directory once its last key is gone (``list_dir`` lists none).
        ``os.rmdir`` removes only an empty directory: a write into one holds its
        temporary file there from before its blob is linked, and makes the
        directory again if it went before that (:meth:`_mkstemp`)."""
        while directory.startswith(top + os.sep) and directory != os.path.join(self.root, _INTERNAL):
            try:
                os.rmdir(directory)
            except OSError:
                return  # not empty (or gone, or not ours to remove): its parents are not empty either
            directory = os.path.dirname(directory)

    def _path(self, key: str) -> str:
        path = os.path.join(self.root, *key.split("/"))
        self._check_inside(os.path.dirname(path))
        return path

    def _meta_path(self, key: str) -> str:
        return os.path.join(self.root, _INTERNAL, "meta", *key.split("/")) + ".json"

    def _write_json(self, path: str, record: Any, *, claim_for: str) -> int:
        """Write *record*, the record of the blob *claim_for*, to *path*, which must not
        exist (:class:`FileExistsError`) unless its writer died before linking the blob
        (:meth:`_remove_orphan`). Returns an fd holding an exclusive ``flock`` on it,
        taken before it became visible: close it once the blob is linked (or the
        record removed)."""
        fd, tmp = self._mkstemp(os.path.dirname(path))
        lock = -1
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            # locked once the file written is closed (NFS's POSIX locks go with any close)
            # and before it is visible; a private file, so this never waits
            lock = os.open(tmp, os.O_RDONLY)
            fcntl.flock(lock, fcntl.LOCK_EX)
            tries = 0
            while True:
                with _held_lock:
                    if path in _held:  # another thread of this process is writing it
                        raise FileExistsError(errno.EEXIST, "being written", path)
                    _held[path] = lock
                try:
                    _link_exclusive(tmp, path)
                    return lock
                except BaseException as e:
                    with _held_lock:
                        _held.pop(path, None)
                    tries += 1
                    if not isinstance(e, FileExistsError) or tries == 3:
                        raise
                    if not self._remove_orphan(path, claim_for):
                        raise
        except BaseException:
            if lock >= 0:
                os.close(lock)
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    @staticmethod
    def _remove_orphan(meta: str, blob: str, *, placeholder: bool = False) -> bool:
        """Remove the record *meta* if it is an orphan: no *blob* beside it, and its
        writer gone (its ``flock`` is free); whether *meta* is gone now. A record being
        written (its writer holds the lock) and one whose blob is linked are left, as
        is an empty placeholder of a filesystem without hard links (never locked; its
        writer may be about to replace it) unless *placeholder* (it is old). Runs under
        the lock of this process's records, so none of its threads makes one visible
        meanwhile."""
        with _held_lock:
            if meta in _held or os.path.lexists(blob):
                return False
            try:
                fd = os.open(meta, os.O_RDONLY)
            except (FileNotFoundError, NotADirectoryError):
                return True
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False  # its writer is alive
                found = os.fstat(fd)
                if (found.st_size == 0 and not placeholder) or os.path.lexists(blob):
                    return False
                try:
                    now = os.stat(meta)
                except FileNotFoundError:
                    return True
                if (now.st_dev, now.st_ino) == (found.st_dev, found.st_ino):
                    os.unlink(meta)  # only a holder of its lock removes it: not another's record
                return True
            finally:
                os.close(fd)

    # -- contract ------------------------------------------------------------------
    def writer(self, req: WriteRequest) -> BlobWriter:
        return _LocalWriter(self, req)

    def open(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            self._check_inside(path)
            if key.startswith(_PENDING) and not os.path.exists(path):
                self._adopt_old_marker(path)
            return open(path, "rb")  # noqa: SIM115 - returned to the caller
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            self._check_root()  # an unmounted volume is an outage, not a missing blob
            raise BlobNotFound(f"no blob {key!r} in {self.describe()}") from None
        except OSError as e:
            raise _oserror(e, f"opening {key!r}") from e

    def stat(self, key: str) -> Blob:
        path = self._path(key)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            self._check_root()
            raise BlobNotFound(f"no blob {key!r} in {self.describe()}") from None
        except OSError as e:
            raise _oserror(e, f"reading {key!r}") from e
        if not os.path.isfile(path):
            raise BlobNotFound(f"no blob {key!r} in {self.describe()}")
        try:
            with open(self._meta_path(key), encoding="utf-8") as f:
                record = json.load(f)
        except (OSError, ValueError):
            record = {}
        created = (dt.datetime.fromisoformat(record["created"]) if "created" in record
                   else dt.datetime.fromtimestamp(st.st_mtime, dt.timezone.utc))
        ctype = record.get("content_type") or mimetypes.guess_type(key)[0] or "application/octet-stream"
        return stored_blob(key, st.st_size, ctype, record.get("metadata", {}), created)

    def delete(self, key: str) -> bool:
        """Unlink the blob (the version there at that instant), then its record, unless
        a write of the same key committing meanwhile has made it its own: a delete
        racing a write leaves the new blob whole (deleted with its record, or kept with
        it), never a blob without its record."""
        path = self._path(key)
        try:
            os.unlink(path)
            existed = True
        except (FileNotFoundError, NotADirectoryError):
            self._check_root()  # not "already deleted" on an unmounted volume
            existed = False
        except IsADirectoryError:
            return False
        except OSError as e:
            raise _oserror(e, f"deleting {key!r}") from e
        meta = self._meta_path(key)
        self._drop_record(meta, path)
        if existed:
            self._prune(os.path.dirname(path), self.root)
            self._prune(os.path.dirname(meta), os.path.join(self.root, _INTERNAL, "meta"))
        return existed

    def _drop_record(self, meta: str, blob: str) -> None:
        """Remove the record *meta* of the blob *blob* a delete just unlinked, as an
        orphan (:meth:`_remove_orphan`): never the record of a write of the same key
        committing meanwhile, which took the old record's place (a blob is linked
        again) or holds its own (its lock is taken). A writer lets go of its record
        moments after it linked its blob, so a held record is waited for, up to
        :data:`_RECORD_WAIT` seconds: then it is the new blob's record, or gone, or
        (its writer stopped on the way) an orphan for the next write of the key or
        :meth:`cleanup_partial`. An empty record is not waited for: the name a writer
        on a filesystem without hard links claims before it renames its record over it
        (:func:`_link_exclusive`), never the record of the blob this delete removed
        (that one had its bytes before its blob was linked): a live writer's, which
        that writer completes, or one a stopped writer left (unlocked: it waited the
        whole :data:`_RECORD_WAIT` on every delete of the key), for cleanup_partial."""
        deadline, pause = time.monotonic() + _RECORD_WAIT, 0.001
        while not self._remove_orphan(meta, blob) and not os.path.lexists(blob):
            if time.monotonic() >= deadline or _empty(meta):
                return
            time.sleep(pause)
            pause = min(2 * pause, 0.05)

    def _walk(self, top: str) -> Iterator[str]:
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = os.path.relpath(dirpath, self.root)
            for name in filenames:
                if not name.startswith("."):
                    yield name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}"

    def list_page(self, prefix: str, cursor: str | None, page_size: int) -> BlobPage:
        self._check_root()  # an unmounted volume lists as an outage, not as empty
        if prefix.startswith(_PENDING) and cursor is None:
            self._adopt_old_markers()
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        top = self._check_inside(os.path.join(self.root, *base.split("/"))) if base else self.root
        keys = sorted(k for k in self._walk(top) if k.startswith(prefix) and (cursor is None or k > cursor))
        items: list[Blob] = []
        for key in keys[:page_size]:
            try:
                st = os.stat(self._path(key))
            except FileNotFoundError:
                continue
            created = dt.datetime.fromtimestamp(st.st_mtime, dt.timezone.utc)
            items.append(Blob(key, st.st_size, created=created))
        more = len(keys) > page_size
        return BlobPage(items, keys[page_size - 1] if more else None)

    def list_dir(self, prefix: str) -> tuple[list[str], list[str]]:
        """One level, as the directory holds it (``os.scandir``); a delete leaves no
        empty directory (:meth:`_prune`), as S3 has none."""
        self._check_root()  # an unmounted volume lists as an outage, not as empty
        top = self.root
        if prefix:
            top = self._check_inside(os.path.join(self.root, *prefix.rstrip("/").split("/")))
        try:
            with os.scandir(top) as entries:
                found = [(entry.name, entry.is_dir()) for entry in entries]
        except (FileNotFoundError, NotADirectoryError):
            return [], []
        except OSError as e:
            raise _oserror(e, f"listing {prefix!r}") from e
        return (sorted(name for name, is_dir in found if is_dir),
                sorted(name for name, is_dir in found if not is_dir))

    def cleanup_partial(self, older_than: float) -> int:
        cutoff = time.time() - older_than
        removed = 0
        for dirpath, _dirs, filenames in os.walk(self.root):
            for name in filenames:
                path = os.path.join(dirpath, name)
                try:
                    if name.startswith(_TMP) and os.stat(path).st_mtime < cutoff:
                        os.unlink(path)
                        removed += 1
                except FileNotFoundError:
                    continue
        meta_top = os.path.join(self.root, _INTERNAL, "meta")
        for dirpath, _dirs, filenames in os.walk(meta_top):
            for name in filenames:
                if name.startswith(".") or not name.endswith(".json"):
                    continue
                path = os.path.join(dirpath, name)
                key = os.path.relpath(path, meta_top)[: -len(".json")].replace(os.sep, "/")
                with contextlib.suppress(FileNotFoundError):
                    # the record of a write that crashed before its link (not one being written)
                    if os.stat(path).st_mtime < cutoff and self._remove_orphan(path, self._path(key),
                                                                               placeholder=True):
                        removed += 1
        return removed
