"""``statekit migrate-uploads SRC_DIR DEST_URL``: move a local uploads folder to a blob store.

::

    statekit migrate-uploads ./uploads "s3://bucket/uploads?endpoint_url=..." --workers 8

Every regular file under ``SRC_DIR`` is stored with :meth:`BlobStore.put` under a new
generated key (its name is kept as the blob's filename). The run is:

* **resumable** -- each finished file is appended to a manifest (JSON lines: path,
  size, mtime, SHA-256, key, store). A rerun skips files whose manifest entry still
  matches their size and mtime and names the same store, so an interrupted run
  (Ctrl-C, a crash, ``kill -9``) picks up where it stopped without uploading finished
  files again;
* **verified** -- the file's SHA-256 is computed from disk, compared with the digest
  computed while uploading (which S3 also checked), and at the end every migrated
  key is checked with ``stat``: size and SHA-256 must match the manifest (a blob
  stored without its SHA-256, as when S3's tag was lost, is read back and hashed). A file that
  fails this check is a failure, left out of the mapping, marked in the manifest and
  copied again by the next run;
* **interruptible** -- on Ctrl-C (SIGINT) or SIGTERM the files already being copied
  finish and are recorded, the mapping is written with everything copied so far, and
  the command says how to resume (run it again: finished files are not copied twice);
* **loud, not stuck** -- directories that cannot be read are failures (exit status
  1); a symbolic link (which may lead out of ``SRC_DIR``; a linked directory is
  reported once, as one line, and not descended into) or a special file (FIFO, socket,
  device) is a warning: it is not copied and the run goes on. A file replaced after it
  was listed (by a link, a FIFO or another file) is not read: a failure, the next run
  sees what is there now. The summary shows the first few warnings and failures and a
  count; the full list goes to ``warnings.txt`` in the output directory;
* **mapped** -- a JSON file maps each old relative path to its new key, for the
  application to update its references (see "Rewrite the rows" in
  docs/migration.md). It is rewritten as the run goes (at least every 2 seconds) and
  at the end or interruption; the manifest holds every finished file at once.

Output files go to ``--output-dir`` (default ``.statekit/migrate-uploads`` under the
current directory): ``manifest.jsonl``, ``map.json`` and ``warnings.txt``.

``--dry-run`` reads and counts but writes nothing. Files whose content contradicts
their extension (HTML named ``photo.png``) are stored under their sniffed type and
reported. Each upload's manifest line is written by the thread that stored it, as
soon as it is stored, so no interruption of the main thread loses one; a hard kill
(``kill -9``) between an upload and its line can leave at most ``--workers``
unreferenced objects; they are not in the mapping.
"""

from __future__ import annotations

import argparse
import collections
import errno
import hashlib
import json
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from .blobs import BlobStore, open_blob_store
from .errors import ContentTypeMismatch, StatekitError

__all__ = ["DEFAULT_OUTPUT_DIR", "MigrationReport", "load_manifest", "main", "migrate"]

#: where the manifest, the mapping and the warnings go unless ``--output-dir`` says
DEFAULT_OUTPUT_DIR = os.path.join(".statekit", "migrate-uploads")
#: warnings and failures printed in full before the summary says "and N more"
SHOWN = 5
_MAP_EVERY = 2.0  # seconds between rewrites of the mapping during a run
#: seconds the destination's check (an ``s3://`` bucket's HeadBucket) gets before the copy
CHECK_TIMEOUT = 10.0


@dataclass
class MigrationReport:
    """What a run did. ``failed`` maps relative paths to error messages (the files
    were not copied: exit status 1); ``warnings`` maps relative paths to what was
    left out on purpose (symbolic links) or copied with a caveat (a blob stored without
    its SHA-256, verified by reading it back) and does not fail the run."""

    total: int = 0
    total_bytes: int = 0
    uploaded: int = 0
    uploaded_bytes: int = 0
    skipped: int = 0
    verified: int = 0
    retyped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)
    mapping: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def _walk(src: str, problems: dict[str, str],
          warnings: dict[str, str]) -> Iterator[tuple[str, os.stat_result]]:
    """Regular files under *src*. A directory that cannot be read goes to *problems*;
    a symbolic link (it may lead out of *src*; a linked directory is one entry and is
    not descended into) to *warnings*: neither is skipped in silence."""

    def rel(path: str) -> str:
        return os.path.relpath(path, src).replace(os.sep, "/")

    def unreadable(e: OSError) -> None:
        problems[rel(e.filename or src)] = f"cannot read directory: {e.strerror or e}"

    for dirpath, dirnames, filenames in os.walk(src, onerror=unreadable):
        dirnames.sort()
        for name in sorted(dirnames):
            if os.path.islink(os.path.join(dirpath, name)):
                warnings[rel(os.path.join(dirpath, name))] = "symbolic link to a directory: not copied"
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:  # deleted since the directory was listed
                continue
            if stat.S_ISREG(st.st_mode):  # regular files only
                yield rel(path), st
            elif stat.S_ISLNK(st.st_mode):
                warnings[rel(path)] = "symbolic link: not copied (replace it with the file it points to)"
            else:
                warnings[rel(path)] = "not a regular file (a FIFO, socket or device): not copied"


def _sha256(f: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := f.read(1024 * 1024):
        digest.update(chunk)
    return digest.hexdigest()


def _open_listed(path: str, st: os.stat_result) -> tuple[BinaryIO, os.stat_result]:
    """*path* opened for reading if it is still the regular file the walk listed (*st*),
    with its ``fstat`` as opened: the size and mtime the manifest records, those of
    what is read (the file may have been rewritten in place since the listing; a
    change after this is seen by the next run, or by the SHA-256 check).

    A file replaced since by a symbolic link (which may lead out of ``SRC_DIR``), a
    FIFO (opening it would wait for a writer) or another file is not read:
    :class:`StatekitError`, the next run sees what is there now. Hashing and upload
    both read this one open file."""
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0)
    flags |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise StatekitError("replaced by a symbolic link since it was listed: not copied; run again") from e
    f = os.fdopen(fd, "rb")
    now = os.fstat(fd)
    if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        f.close()
        raise StatekitError("replaced by another file since it was listed: not copied; run again")
    return f, now


def load_manifest(path: str) -> dict[str, dict[str, Any]]:
    """Finished entries by relative path (the last entry of a path wins, and a later
    ``unverified`` one cancels it; a torn last line from a killed run is ignored)."""
    done: dict[str, dict[str, Any]] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(entry, dict) or "path" not in entry:
                    continue
                if entry.get("status") == "done":
                    done[str(entry["path"])] = entry
                else:
                    done.pop(str(entry["path"]), None)
    except FileNotFoundError:
        pass
    return done


def _fsync(path: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        os.fsync(f.fileno())


def _write_json_atomic(path: str, data: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def migrate(
    src: str,
    store: BlobStore,
    *,
    manifest: str,
    mapping: str | None = None,
    workers: int = 4,
    dry_run: bool = False,
    prefix: str = "",
    progress: Callable[[int, int], None] | None = None,
) -> MigrationReport:
    """Copy every file under *src* into *store*; see the module docstring.

    :param progress: called as ``progress(files_done, bytes_done)`` after each file.
    :raises KeyboardInterrupt: (and any unexpected error) stops the run: uploads
        not yet started are cancelled, those under way finish and are recorded, and
        the mapping is written with every file copied so far, so the next run resumes
        without copying any of them again.
    """
    if not os.path.isdir(src):
        raise StatekitError(f"{src!r} is not a directory")
    report = MigrationReport()
    done = load_manifest(manifest)
    dest = store.describe()
    origin = os.path.abspath(src)
    todo: list[tuple[str, os.stat_result]] = []
    bytes_done = 0
    for rel, st in _walk(src, report.failed, report.warnings):
        report.total += 1
        report.total_bytes += st.st_size
        entry = done.get(rel)
        if (entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns
                and entry.get("store", dest) == dest and entry.get("src", origin) == origin):
            report.skipped += 1
            bytes_done += st.st_size
            report.mapping[rel] = str(entry["key"])
        else:
            todo.append((rel, st))
    if dry_run:
        report.uploaded = len(todo)
        report.uploaded_bytes = sum(st.st_size for _, st in todo)
        return report

    os.makedirs(os.path.dirname(os.path.abspath(manifest)), exist_ok=True)
    files_done = report.skipped
    mapped_at = time.monotonic()

    def one(rel: str, st: os.stat_result) -> dict[str, Any]:
        path = os.path.join(src, *rel.split("/"))
        name = os.path.basename(rel)
        retyped = False
        f, st = _open_listed(path, st)
        with f:
            local_sha = _sha256(f)
            f.seek(0)
            try:
                blob = store.put(f, filename=name, prefix=prefix)
            except ContentTypeMismatch:
                retyped = True
                f.seek(0)
                blob = store.put(f, filename=name, content_type="application/octet-stream", prefix=prefix)
        if blob.sha256 != local_sha or blob.size != st.st_size:
            store.delete(blob.key)
            raise StatekitError(f"{rel} changed while it was copied (SHA-256 differs); run again")
        return {"path": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": local_sha,
                "key": blob.key, "content_type": blob.content_type, "retyped": retyped, "store": dest,
                "src": origin, "status": "done"}

    lock = threading.Lock()
    outcomes: collections.deque[tuple[str, dict[str, Any] | None, str]] = collections.deque()

    def run(rel: str, st: os.stat_result) -> None:
        """:func:`one` in a worker, which appends the file's manifest line itself: the
        main thread may be interrupted (Ctrl-C, once or twice) at any point of its
        bookkeeping, a stored object is recorded all the same. The main thread takes
        the outcome into the report (:func:`settle`)."""
        try:
            entry = one(rel, st)
        except (StatekitError, OSError) as e:
            outcomes.append((rel, None, f"{type(e).__name__}: {e}"))
            return
        with lock, open(manifest, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")
        outcomes.append((rel, entry, ""))

    def settle() -> None:
        """Take the finished uploads into the report, the mapping and the progress. An
        outcome is dropped once taken in; one interrupted half-way is taken in again
        (by the mapping, each file counts once)."""
        nonlocal files_done, bytes_done, mapped_at
        while outcomes:
            rel, entry, error = outcomes[0]
            if entry is None:
                report.failed[rel] = error
            elif report.mapping.get(rel) != entry["key"]:
                report.mapping[rel] = str(entry["key"])
                report.uploaded += 1
                report.uploaded_bytes += int(entry["size"])
                if entry["retyped"]:
                    report.retyped.append(rel)
                files_done += 1
                bytes_done += int(entry["size"])
                if progress is not None:
                    progress(files_done, bytes_done)
            outcomes.popleft()
        if mapping and time.monotonic() - mapped_at >= _MAP_EVERY:
            _write_json_atomic(mapping, report.mapping)
            mapped_at = time.monotonic()

    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending: set[Future[None]] = set()
        queue = iter(todo)
        try:
            while True:
                while len(pending) < max(1, workers) * 2 and (item := next(queue, None)) is not None:
                    pending.add(pool.submit(run, *item))
                if not pending:
                    break
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    fut.result()  # an unexpected error stops the run
                settle()
        except BaseException:
            # keep what was done: uploads under way finish and are recorded (by their
            # workers, whatever happens here), so the next run neither copies them again
            # nor leaves them as unreferenced objects; those not started are not
            pool.shutdown(wait=True, cancel_futures=True)
            settle()
            _fsync(manifest)
            if mapping:
                _write_json_atomic(mapping, report.mapping)
            raise

    entries = load_manifest(manifest)
    try:  # the mapping is written at the end, interrupted or not
        for rel, key in sorted(report.mapping.items()):
            problem = _verify(store, key, entries.get(rel, {}), report.warnings, rel)
            if problem is None:
                report.verified += 1
                continue
            report.failed[rel] = f"verify: {problem}"
            # the next run copies it again instead of trusting the manifest; until then
            # the mapping names no blob for it (not one that is missing or differs)
            with open(manifest, "a", encoding="utf-8") as out:
                out.write(json.dumps({"path": rel, "status": "unverified"}) + "\n")
                out.flush()
                os.fsync(out.fileno())
            del report.mapping[rel]
    finally:
        if mapping:
            _write_json_atomic(mapping, report.mapping)
    return report


def _verify(store: BlobStore, key: str, entry: dict[str, Any], warnings: dict[str, str],
            rel: str) -> str | None:
    """What is wrong with the blob *key* against its manifest *entry*, or ``None``; a
    blob stored without its SHA-256 is a warning for *rel* in *warnings*."""
    try:
        blob = store.stat(key)
    except StatekitError as e:
        return f"{type(e).__name__}: {e}"
    sha256 = blob.sha256
    if sha256 is None and blob.size == entry.get("size"):
        # e.g. S3's tag lost after the upload completed: the content is checked instead of
        # copying the file again under a second key
        try:
            with store.open(key) as f:
                sha256 = _sha256(f)
        except StatekitError as e:
            return f"{type(e).__name__}: {e}"
        warnings[rel] = (f"stored as {key} without its SHA-256 (S3 lost its tag): verified by reading "
                         "it back; stat() reports sha256=None")
    if blob.size != entry.get("size") or sha256 != entry.get("sha256"):
        return f"{key} does not match the manifest (size or SHA-256)"
    return None


def main(argv: Sequence[str]) -> int:
    """``statekit migrate-uploads SRC_DIR DEST_URL``: copy a local uploads directory to a
    blob store (resumable, SHA-256 verified). Exit status: 0 done (warnings allowed),
    1 some files failed, 130 interrupted (run the same command again to resume)."""
    from .cli import PlainHelpFormatter, plain

    parser = argparse.ArgumentParser(
        prog="statekit migrate-uploads", description=plain(main.__doc__ or ""),
        formatter_class=PlainHelpFormatter,
    )
    parser.add_argument("src", metavar="SRC_DIR", help="the local uploads directory to copy")
    parser.add_argument("dest", metavar="DEST_URL", help="s3://bucket/prefix?..., file:///path or memory://")
    parser.add_argument("--dry-run", action="store_true", help="count what would be copied; write nothing")
    parser.add_argument("--workers", type=int, default=4, metavar="N", help="parallel uploads (default 4)")
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, metavar="DIR",
                        help="where the manifest, the mapping and the warnings go "
                             f"(default ./{DEFAULT_OUTPUT_DIR})")
    parser.add_argument("--manifest", metavar="FILE",
                        help="progress record for resuming, JSON lines (default DIR/manifest.jsonl)")
    parser.add_argument("--mapping", metavar="FILE",
                        help="JSON object: old relative path -> new key (default DIR/map.json)")
    parser.add_argument("--prefix", default="", help="key prefix inside the store (default none)")
    parser.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                        help="progress bar on stderr: auto (when it is a terminal, the default), on or off")
    opts = parser.parse_args(list(argv))
    if opts.workers < 1:
        parser.error("--workers must be at least 1")
    manifest = opts.manifest or os.path.join(opts.output_dir, "manifest.jsonl")
    mapping = opts.mapping or os.path.join(opts.output_dir, "map.json")
    store = open_blob_store(opts.dest)
    if store.scheme == "s3":
        # one HeadBucket first (the readiness check's): a bucket that does not exist or an
        # endpoint that does not answer is one line, not a failure per file
        from .blobs.s3 import readiness_check

        readiness_check(opts.dest, CHECK_TIMEOUT)
    show = opts.progress == "on" or (opts.progress == "auto" and sys.stderr.isatty())
    first = migrate(opts.src, store, manifest=manifest, dry_run=True, prefix=opts.prefix)
    if opts.dry_run:
        report = first
    else:
        old = signal.getsignal(signal.SIGTERM)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops as Ctrl-C does
        done = [first.skipped]
        try:
            with _progress_bar(show) as bar:
                bar.start(first.total, first.total_bytes, first.skipped)

                def update(files: int, size: int) -> None:
                    done[0] = files
                    bar.update(files, size)

                report = migrate(opts.src, store, manifest=manifest, mapping=mapping,
                                 workers=opts.workers, prefix=opts.prefix, progress=update)
        except KeyboardInterrupt:
            print(f"interrupted: {done[0]} of {first.total} files are in the store and in {mapping}; "
                  "run the same command again to resume (finished files are not copied again)",
                  file=sys.stderr)
            return 130
        finally:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, old)
    verb = "would copy" if opts.dry_run else "copied"
    print(f"{report.total} files ({report.total_bytes} bytes): {verb} {report.uploaded} "
          f"({report.uploaded_bytes} bytes), skipped {report.skipped} already migrated"
          + ("" if opts.dry_run else f", verified {report.verified}"))
    notes = {**report.warnings,
             **{rel: "content does not match its extension; stored as its sniffed type"
                for rel in report.retyped}}
    listing = os.path.join(opts.output_dir, "warnings.txt")
    if (notes or report.failed) and not opts.dry_run:
        os.makedirs(opts.output_dir, exist_ok=True)
        with open(listing, "w", encoding="utf-8") as f:
            f.writelines(f"FAILED {_shown(rel)}: {err}\n" for rel, err in sorted(report.failed.items()))
            f.writelines(f"warning {_shown(rel)}: {text}\n" for rel, text in sorted(notes.items()))
    _summarise("warning", "warnings", notes, sys.stdout, None if opts.dry_run else listing)
    _summarise("FAILED", "failures", report.failed, sys.stderr, None if opts.dry_run else listing)
    if not opts.dry_run:
        print(f"mapping written to {mapping}; manifest {manifest}")
    return 0 if report.ok else 1


def _shown(rel: str) -> str:
    """*rel* for people and text files: bytes of a name that is not UTF-8 (kept by
    ``os.walk`` as surrogates, which no UTF-8 stream accepts) as ``\\xe9``."""
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _summarise(label: str, plural: str, items: dict[str, str], stream: Any, listing: str | None) -> None:
    """The first :data:`SHOWN` of *items*, then how many more and where they all are."""
    for rel, text in sorted(items.items())[:SHOWN]:
        print(f"{label} {_shown(rel)}: {text}", file=stream)
    if len(items) > SHOWN:
        where = f" (all in {listing})" if listing else ""
        print(f"... and {len(items) - SHOWN} more {plural}{where}", file=stream)


class _progress_bar:  # noqa: N801 - used as a context manager
    """A rich progress bar (files and bytes) when *show*, else silent."""

    def __init__(self, show: bool) -> None:
        self._show = show
        self._progress: Any = None
        self._task: Any = None
        self._files = 0

    def __enter__(self) -> _progress_bar:
        if self._show:
            try:
                from rich.progress import (
                    BarColumn,
                    DownloadColumn,
                    Progress,
                    TimeRemainingColumn,
                    TransferSpeedColumn,
                )
            except ImportError:
                self._show = False
            else:
                self._progress = Progress("[progress.description]{task.description}", BarColumn(),
                                          DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
                self._progress.start()
        return self

    def start(self, files: int, total_bytes: int, skipped: int) -> None:
        self._files = files
        if self._progress is not None:
            self._task = self._progress.add_task(f"{skipped}/{files} files", total=total_bytes)

    def update(self, files_done: int, bytes_done: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=bytes_done,
                                  description=f"{files_done}/{self._files} files")

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
