"""``s3://[key:secret@]bucket[/prefix]?endpoint_url=...&region=...`` blob store (boto3).

Works with AWS S3, MinIO, moto's server and other S3-compatible stores.

Writes: up to ``multipart_threshold`` bytes go in one ``PutObject``; larger inputs
become a multipart upload of ``part_size`` parts, at most ``max_concurrency`` in
flight, so memory stays at about ``(max_concurrency + 1) * part_size``. Every request
carries its SHA-256 (``ChecksumSHA256``) so S3 verifies what it stores, and the
final request is conditional (``If-None-Match: *``) so an existing object is never
replaced. On any error the multipart upload is aborted; if the endpoint is gone and
the abort fails too, :meth:`~statekit.blobs.BlobStore.cleanup_incomplete` aborts it
later -- the parts were never visible as an object.

Presigned links (:meth:`~statekit.blobs.BlobStore.url`) and upload forms are signed
with Signature Version 4 (``X-Amz-*``; at most 7 days), in every region: botocore
would presign with SigV2 where S3 still takes it, which it refuses for buckets made
since June 2020.

URL options: ``endpoint_url``, ``public_endpoint_url`` (where browsers reach the
store, when it differs from ``endpoint_url``: presigned URLs are signed for that host,
e.g. ``endpoint_url=http://minio:9000&public_endpoint_url=https://files.example.com``
under Docker Compose; a proxy there passes the path and ``Host`` on unchanged, which
the signature covers: a CDN origin that rewrites them fails it), ``region``,
``addressing_style``, ``connect_timeout`` (default 5 s), ``read_timeout`` (60 s),
``retries`` (3), ``multipart_threshold`` and ``part_size`` (5 MiB, S3's minimum; both
at most 5 GiB, S3's largest part and ``PutObject``: a
:class:`~statekit.errors.ConfigError` otherwise), ``max_concurrency`` (2: the parts of
one put in flight), ``profile``, ``checksum`` (``sha256``/``none``),
``conditional_writes`` (default true; turn it off only for stores that reject
``If-None-Match`` or a delete's ``If-Match``: every write is then a ``HEAD`` before
the ``PUT``, so two writers of one key at the same instant can both succeed, and a
direct upload's ``confirm()`` and ``cleanup_incomplete()`` can both act on it again,
within that instant; two deletes of one blob at that instant can both report it),
``request_checksum_calculation`` and ``response_checksum_validation`` (botocore's
``when_supported`` / ``when_required``).

Connections: the client's pool keeps ``concurrent_puts * (max_concurrency + 1)``
connections (a keyword, default :data:`~statekit.blobs.protocol.CONCURRENT_PUTS`, 32:
an :class:`~statekit.blobs.AsyncBlobStore` passes its ``upload_threads``): each put's
parts in flight, and one more per put thread for its reads, stats and commits. A
smaller pool discards the connections past it (urllib3's "Connection pool is full"
warning) and opens them again for the next request. Connections are opened as they
are needed: an idle store holds none.

Errors: no usable credentials (none in the URL, the environment or a profile; an
unknown ``profile``) and a bucket that does not exist are a
:class:`~statekit.errors.ConfigError` saying what to fix, for every call and the
readiness check: configuration, not an outage (nothing was sent, or nothing stored).

S3-compatible stores: boto3 1.36 and later add a CRC checksum to every upload and
validate the ones in responses by default, which some S3-compatible stores refuse
or answer wrongly (some MinIO versions, Backblaze B2, Google Cloud Storage's
interoperability API). For an ``endpoint_url`` outside AWS (not ``*.amazonaws.com``)
both settings default to ``when_required`` -- the checksums the store asks for, plus
the ``ChecksumSHA256`` of the ``checksum`` option -- unless the URL option or
``AWS_REQUEST_CHECKSUM_CALCULATION`` / ``AWS_RESPONSE_CHECKSUM_VALIDATION`` sets
them. AWS endpoints keep botocore's defaults.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import io
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO

from ..backends import require
from ..config import _S3_OPTIONS as S3_OPTIONS
from ..config import parse_url
from ..errors import BackendUnavailable, BlobError, BlobExists, BlobNotFound, ConfigError, StatekitError
from .keys import RESERVED_PREFIX
from .protocol import (
    CONCURRENT_PUTS,
    META_SHA256,
    Blob,
    BlobBackend,
    BlobPage,
    BlobWriter,
    WriteRequest,
    seek_position,
    stored_blob,
)

__all__ = ["MAX_PART_SIZE", "MAX_PRESIGN_SECONDS", "MIN_PART_SIZE", "S3Backend", "presign_seconds",
           "readiness_check", "translate_error"]

MIN_PART_SIZE = 5 * 1024 * 1024
#: S3's limits: a part of a multipart upload, and a single PutObject, hold at most 5 GiB
MAX_PART_SIZE = 5 * 1024**3
MAX_PARTS = 10_000
#: the longest a SigV4 presigned URL can last
MAX_PRESIGN_SECONDS = 7 * 86400


#: botocore's errors of loading credentials and their configuration (the names that
#: exist in the installed botocore): raised before a request is sent
_CREDENTIAL_ERRORS = ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                      "ProfileNotFound", "ConfigNotFound", "ConfigParseError", "InvalidConfigError",
                      "NoAuthTokenError", "TokenRetrievalError", "SSOError", "LoginError")
_CREDENTIALS_FIX = ("put KEY:SECRET@ in the URL, add ?profile=NAME, or set them for boto3 (AWS_ACCESS_KEY_ID "
                    "and AWS_SECRET_ACCESS_KEY, ~/.aws, an instance role)")


def _credential_error(e: BaseException) -> bool:
    import botocore.exceptions

    family = tuple(getattr(botocore.exceptions, name) for name in _CREDENTIAL_ERRORS
                   if hasattr(botocore.exceptions, name))
    return isinstance(e, family)


def _missing_bucket(bucket: str, what: str, endpoint: str | None = None) -> ConfigError:
    """The error of a bucket that does not exist: configuration (a typo, a bucket not
    created yet, the wrong endpoint), not an outage nor a missing blob."""
    at = f" at {endpoint}" if endpoint else ""
    return ConfigError(f"S3 {what}: the bucket {bucket!r} does not exist{at}: create it, "
                       "or correct the bucket (or endpoint_url) in the s3:// URL")


def translate_error(e: BaseException, what: str, *, bucket: str = "",
                    endpoint: str | None = None) -> StatekitError:
    """A typed statekit error for a botocore exception raised while doing *what*.

    Missing or unusable credentials (botocore refused to sign: nothing was sent) and a
    missing bucket are a :class:`ConfigError` that says what to fix; *bucket* and
    *endpoint* name the store in it."""
    from botocore.exceptions import BotoCoreError, ClientError

    if _credential_error(e):
        found = "none found" if type(e).__name__ == "NoCredentialsError" else f"{type(e).__name__}: {e}"
        return ConfigError(f"S3 {what}: no usable AWS credentials ({found}): {_CREDENTIALS_FIX}; "
                           "nothing was sent")
    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        msg = f"S3 {what}: {code or status}: {err.get('Message', '')}".rstrip(": ")
        if code == "NoSuchBucket":
            return _missing_bucket(bucket or str(err.get("BucketName", "")), what, endpoint)
        if code in ("NoSuchKey", "NotFound", "404") or status == 404:
            return BlobNotFound(msg)
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
            return BlobExists(msg)
        if status >= 500 or status in (408, 429) or code in ("SlowDown", "RequestTimeout"):
            return BackendUnavailable(msg)
        return BlobError(msg)
    if isinstance(e, (BotoCoreError, OSError)) or type(e).__module__.startswith("urllib3"):
        return BackendUnavailable(f"S3 {what}: {type(e).__name__}: {e}")
    return BlobError(f"S3 {what}: {type(e).__name__}: {e}")


_log = logging.getLogger("statekit.blobs")
_commit = threading.local()  # .active while this thread sends a commit (see _no_resend)


def _no_resend(caught_exception: BaseException | None = None, response: Any = None, **_: Any) -> None:
    """botocore ``needs-retry`` hook: a commit (``PutObject``, ``CompleteMultipartUpload``)
    that failed without S3's verdict -- no reply, or a 5xx other than 503's "slow down" --
    may have been applied, so it is not sent again: the error goes to the writer."""
    if not getattr(_commit, "active", False):
        return
    if caught_exception is not None:
        raise caught_exception
    if response is not None:
        status = int(getattr(response[0], "status_code", 0) or 0)
        if status >= 500 and status != 503:
            err = response[1].get("Error", {}) if isinstance(response[1], dict) else {}
            raise BackendUnavailable(f"S3 commit: {err.get('Code') or status}: {err.get('Message', '')}")


def presign_seconds(expires: int) -> int:
    """*expires* (whole seconds, at least 1), which a presigned link may last.

    :raises ValueError: it is more than the 7 days of a SigV4 presigned URL
        (:data:`MAX_PRESIGN_SECONDS`): S3 would refuse the link when it is used."""
    if expires > MAX_PRESIGN_SECONDS:
        raise ValueError(f"S3 presigned URLs last at most 7 days ({MAX_PRESIGN_SECONDS} s), "
                         f"not {expires} s: S3 would refuse the link when it is used")
    return expires


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


class _S3Writer(BlobWriter):
    def __init__(self, store: S3Backend, req: WriteRequest) -> None:
        self._s = store
        self._req = req
        self._full = store._full(req.key)
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._inflight: collections.deque[Future[dict[str, Any]]] = collections.deque()
        self._pool: ThreadPoolExecutor | None = None
        self._part_size = store.part_size
        if req.size_hint:  # keep within S3's 10,000 parts (of at most 5 GiB)
            self._part_size = min(max(self._part_size, -(-req.size_hint // (MAX_PARTS - 1))), MAX_PART_SIZE)

    def _common(self) -> dict[str, Any]:
        return {"ContentType": self._req.content_type, "ContentDisposition": self._req.disposition}

    def write(self, data: bytes) -> None:
        self._buf += data
        if self._upload_id is None and len(self._buf) < max(self._s.multipart_threshold, self._part_size):
            return
        if len(self._buf) >= self._part_size:
            self._flush_part()

    def _flush_part(self) -> None:
        if self._upload_id is None:
            kwargs = self._common()
            if self._s.checksum:
                kwargs["ChecksumAlgorithm"] = "SHA256"
            resp = self._s._call("create_multipart_upload", self._req.key, Bucket=self._s.bucket,
                                 Key=self._full, Metadata=self._req.metadata, **kwargs)
            self._upload_id = resp["UploadId"]
            self._pool = ThreadPoolExecutor(self._s.max_concurrency, thread_name_prefix="statekit-s3-part")
        part, self._buf = self._buf, bytearray()  # handed over, not copied
        number = len(self._parts) + len(self._inflight) + 1
        if number > MAX_PARTS:
            raise BlobError(f"upload needs more than {MAX_PARTS} parts of {self._part_size} bytes: "
                            + ("raise part_size" if self._part_size < MAX_PART_SIZE else
                               "larger than S3 stores (10,000 parts of at most 5 GiB)"))
        if number % 1000 == 0:  # unknown total size: grow parts so 10,000 of them reach ~5 TB
            self._part_size = min(2 * self._part_size, MAX_PART_SIZE)
        while len(self._inflight) >= self._s.max_concurrency:
            self._parts.append(self._inflight.popleft().result())
        assert self._pool is not None
        self._inflight.append(self._pool.submit(self._upload_part, number, part))

    def _upload_part(self, number: int, data: bytearray) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self._s.checksum:
            kwargs["ChecksumSHA256"] = _b64(hashlib.sha256(data).digest())
            kwargs["ChecksumAlgorithm"] = "SHA256"
        resp = self._s._call("upload_part", self._req.key, Bucket=self._s.bucket, Key=self._full,
                             UploadId=self._upload_id, PartNumber=number, Body=data, **kwargs)
        part = {"PartNumber": number, "ETag": resp["ETag"]}
        if self._s.checksum:
            part["ChecksumSHA256"] = kwargs["ChecksumSHA256"]
        return part

    def commit(self, sha256: str, size: int) -> None:
        if self._upload_id is None:
            kwargs = self._common()
            if self._s.checksum:
                kwargs["ChecksumSHA256"] = _b64(bytes.fromhex(sha256))
                kwargs["ChecksumAlgorithm"] = "SHA256"
            body, self._buf = self._buf, bytearray()
            cond = self._s._if_absent(self._req.key)
            with self._unknown_outcome():
                self._s._call("put_object", self._req.key, Bucket=self._s.bucket, Key=self._full, Body=body,
                              Metadata=dict(self._req.metadata, **{META_SHA256: sha256}), **kwargs, **cond)
            return
        if self._buf or not self._parts and not self._inflight:
            self._flush_part()
        while self._inflight:
            self._parts.append(self._inflight.popleft().result())
        cond = self._s._if_absent(self._req.key)
        with self._unknown_outcome():
            self._s._call("complete_multipart_upload", self._req.key, Bucket=self._s.bucket, Key=self._full,
                          UploadId=self._upload_id, MultipartUpload={"Parts": self._parts}, **cond)
        self._upload_id = None
        self._shutdown()
        # The whole-object SHA-256 is known only now; a tag carries it for stat(). The
        # object is complete and visible without it: the put succeeds, and says so.
        try:
            self._s._call("put_object_tagging", self._req.key, Bucket=self._s.bucket, Key=self._full,
                          Tagging={"TagSet": [{"Key": META_SHA256, "Value": sha256}]})
        except StatekitError as e:
            _log.warning("S3 blob %r stored without its SHA-256 tag (%s): stat() reports sha256=None; "
                         "the content is intact (its SHA-256 is %s)", self._req.key, e, sha256)

    @contextlib.contextmanager
    def _unknown_outcome(self) -> Iterator[None]:
        """The commit call: when it fails without a verdict from S3 (a timeout, a lost
        connection, a 5xx), S3 may have stored the object all the same. It is never sent
        again; the object, under a key generated for this put alone, is deleted (the
        multipart upload aborted first), so "nothing is stored" holds, and the error
        says the outcome was unknown and whether the delete failed (then the object
        may be there, under the key it names)."""
        _commit.active = True
        try:
            yield
        except BackendUnavailable as e:
            _commit.active = False
            try:
                if self._upload_id is not None:
                    upload_id, self._upload_id = self._upload_id, None
                    with contextlib.suppress(BlobNotFound):
                        self._s._call("abort_multipart_upload", self._req.key, Bucket=self._s.bucket,
                                      Key=self._full, UploadId=upload_id)
                self._s._call("delete_object", self._req.key, Bucket=self._s.bucket, Key=self._full)
            except StatekitError as gone:
                raise BackendUnavailable(f"{e} (outcome unknown: the blob may exist under {self._req.key!r}, "
                                         f"and deleting it failed: {gone})") from e
            raise BackendUnavailable(f"{e} (outcome unknown: whatever S3 stored was deleted; "
                                     "nothing is stored)") from e
        finally:
            _commit.active = False

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def abort(self) -> None:
        self._buf = bytearray()
        for fut in self._inflight:
            fut.cancel()
        self._shutdown()  # parts still being sent finish (or fail) before the abort
        self._inflight.clear()
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            try:
                self._s._call("abort_multipart_upload", self._req.key, Bucket=self._s.bucket,
                              Key=self._full, UploadId=upload_id)
            except BlobNotFound:
                pass


class _RangeReader(io.RawIOBase):
    """Reads an object through ranged GETs of ``window`` bytes, fetched as needed."""

    def __init__(self, store: S3Backend, key: str, size: int, window: int) -> None:
        self._s, self._key, self._size, self._window = store, key, size, window
        self._pos = 0
        self._body: Any = None
        self._body_end = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        new = seek_position(offset, whence, self._pos, self._size)
        if new != self._pos:
            self._drop()
            self._pos = new
        return self._pos

    def _drop(self) -> None:
        if self._body is not None:
            with contextlib.suppress(Exception):
                self._body.close()
            self._body = None

    def readinto(self, b: Any) -> int:
        if self._pos >= self._size or len(b) == 0:
            return 0
        if self._body is None or self._pos >= self._body_end:
            self._drop()
            end = min(self._size, self._pos + self._window)
            resp = self._s._call("get_object", self._key, Bucket=self._s.bucket, Key=self._s._full(self._key),
                                 Range=f"bytes={self._pos}-{end - 1}")
            self._body, self._body_end = resp["Body"], end
        want = min(len(b), self._body_end - self._pos)
        try:
            data = self._body.read(want)
        except Exception as e:
            self._drop()
            raise translate_error(e, f"reading {self._key!r}") from e
        if not data:
            self._drop()
            raise BackendUnavailable(f"S3 closed the stream of {self._key!r} early at byte {self._pos}")
        n = len(data)
        b[:n] = data
        self._pos += n
        return n

    def close(self) -> None:
        self._drop()
        super().close()


_loader_lock = threading.Lock()
_loader: Any = None


def _new_loader_lock() -> None:
    """In a forked child: a new lock (a parent thread opening a store at fork time
    held it, and no thread of the child would ever release it)."""
    global _loader_lock
    _loader_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_loader_lock)


def _session(boto3: Any, key: str | None, secret: str | None, opts: dict[str, Any]) -> Any:
    """A boto3 session for one store, on a botocore data loader shared by every
    store of the process: each session would otherwise parse botocore's S3 model
    again (60-500 ms a ``BlobStore``, most of opening one)."""
    import botocore.session

    global _loader
    with _loader_lock:
        core = botocore.session.Session()
        if _loader is None:
            _loader = core.get_component("data_loader")
        core.register_component("data_loader", _loader)
        paths = list(_loader.search_paths)
        session = boto3.session.Session(aws_access_key_id=key, aws_secret_access_key=secret,
                                        region_name=opts.get("region"), profile_name=opts.get("profile"),
                                        botocore_session=core)
        # boto3 appends its own data directory to the loader's paths, once per session
        _loader.search_paths[:] = paths + [p for p in _loader.search_paths if p not in paths]
    return session


_CHECKSUM_SETTINGS = ("request_checksum_calculation", "response_checksum_validation")


def _is_aws(endpoint_url: str | None) -> bool:
    """Whether requests go to AWS: no ``endpoint_url``, or one under amazonaws.com."""
    if not endpoint_url:
        return True
    host = (urllib.parse.urlsplit(endpoint_url).hostname or "").rstrip(".")
    return host.endswith((".amazonaws.com", ".amazonaws.com.cn"))


def _checksum_defaults(endpoint_url: str | None) -> dict[str, str | None]:
    """botocore's checksum settings for *endpoint_url*: ``when_required`` for a
    store outside AWS, unless the environment sets them (``None``: botocore's own
    resolution, from the environment, the profile or its default)."""
    if _is_aws(endpoint_url):
        return dict.fromkeys(_CHECKSUM_SETTINGS)
    return {name: None if os.environ.get(f"AWS_{name.upper()}") else "when_required"
            for name in _CHECKSUM_SETTINGS}


_probes: dict[tuple[int, str], S3Backend] = {}


def readiness_check(url: str, timeout: float) -> None:
    """The readiness check of the ``s3://`` store at *url*: :meth:`S3Backend.check_bucket`
    with the store's credentials, profile and endpoint, one attempt within *timeout*
    seconds (its client is kept per process). :raises ConfigError: no such bucket, no
    credentials. :raises BackendUnavailable:"""
    key = (os.getpid(), url)
    probe = _probes.get(key)
    if probe is None:
        parsed = parse_url(url, kinds=("s3",))
        opts = {**parsed.options, "connect_timeout": timeout, "read_timeout": timeout, "retries": 0}
        client = S3Backend._make_client(parsed.username, parsed.password, opts)
        probe = _probes[key] = S3Backend(client=client, bucket=parsed.bucket, prefix=parsed.prefix)
    probe.check_bucket()


class S3Backend(BlobBackend):
    """Blobs in an S3 bucket; see the module docstring for options and guarantees.

    :param client: a ready boto3 S3 client (then *bucket* is required and the URL's
        connection options are ignored).
    :param part_size, multipart_threshold, max_concurrency: the URL's options of those
        names, checked as they are (a ConfigError outside their range), and winning
        over them.
    :param concurrent_puts: the puts this store runs at once, which size the client's
        connection pool (see the module docstring; not for a given *client*, whose
        pool is its own).

    Thread-safe (boto3 clients are). Every call has the configured connect and read
    timeouts; botocore's standard retry mode retries throttling and 5xx answers.
    """

    scheme = "s3"

    def __init__(self, url: str | None = None, *, client: Any = None, bucket: str | None = None,
                 presign_client: Any = None, prefix: str | None = None, part_size: int | None = None,
                 multipart_threshold: int | None = None, max_concurrency: int | None = None,
                 concurrent_puts: int | None = None, read_window: int = 8 * 1024 * 1024) -> None:
        self._url_text = ""
        parsed = parse_url(url, kinds=("s3",)) if url is not None else None
        opts: dict[str, Any] = dict(parsed.options) if parsed is not None else {}
        for name, value in (("part_size", part_size), ("multipart_threshold", multipart_threshold),
                            ("max_concurrency", max_concurrency)):
            if value is not None:  # a keyword is held to what the URL's option takes, and wins
                opts[name] = S3_OPTIONS[name](str(value))
        if concurrent_puts is not None:  # a count, not its text (the URL's ?concurrent_puts= is)
            if type(concurrent_puts) is not int:
                raise ConfigError(f"concurrent_puts must be a whole number, at least 1: {concurrent_puts!r}")
            opts["concurrent_puts"] = S3_OPTIONS["concurrent_puts"](str(concurrent_puts))
        if parsed is not None:
            bucket = bucket or parsed.bucket
            prefix = parsed.prefix if prefix is None else prefix
            self._url_text = f"s3://{parsed.bucket}/{parsed.prefix}".rstrip("/")
            if client is None:
                client = self._make_client(parsed.username, parsed.password, opts)
            if opts.get("public_endpoint_url") and presign_client is None:
                presign_client = self._make_client(parsed.username, parsed.password,
                                                   {**opts, "endpoint_url": opts["public_endpoint_url"]})
        if client is None or not bucket:
            raise ConfigError("S3Backend needs an s3:// URL, or client= and bucket=")
        self.client = client
        for op in ("PutObject", "CompleteMultipartUpload"):  # more specific: before botocore's retry
            client.meta.events.register(f"needs-retry.s3.{op}", _no_resend,
                                        unique_id=f"statekit-no-resend-{op}")
        #: signs the URLs handed to browsers (no requests go through it)
        self.presign_client = presign_client or client
        self.bucket = bucket
        self.prefix = (prefix or "").strip("/")
        self._url_text = self._url_text or f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.part_size = opts.get("part_size", MIN_PART_SIZE)
        self.multipart_threshold = opts.get("multipart_threshold", self.part_size)
        if not MIN_PART_SIZE <= self.part_size <= MAX_PART_SIZE:
            raise ConfigError(f"part_size must be between {MIN_PART_SIZE} bytes (5 MiB) and {MAX_PART_SIZE} "
                              f"bytes (5 GiB), S3's smallest and largest part, not {self.part_size}")
        if self.multipart_threshold > MAX_PART_SIZE:
            raise ConfigError(f"multipart_threshold must be at most {MAX_PART_SIZE} bytes (5 GiB), the "
                              f"largest object S3 takes in one PutObject, not {self.multipart_threshold}")
        self.max_concurrency = opts.get("max_concurrency", 2)
        self.checksum = opts.get("checksum", "sha256") == "sha256"
        self.conditional_writes = bool(opts.get("conditional_writes", True))
        self.read_window = read_window
        self._tags_refused = False  # S3 refused GetObjectTagging (logged once)
        self._bucket_seen = False  # HeadBucket found the bucket (see _head)

    @staticmethod
    def _make_client(key: str | None, secret: str | None, opts: dict[str, Any]) -> Any:
        boto3 = require("boto3", feature="s3:// URLs")
        from botocore.config import Config

        checksums = {name: opts.get(name, default)
                     for name, default in _checksum_defaults(opts.get("endpoint_url")).items()}
        config = Config(
            **{name: value for name, value in checksums.items() if value is not None},
            # SigV4 for the links and forms it presigns too: botocore presigns with SigV2 unless
            # told, in every region that still takes it, and S3 refuses SigV2 for buckets made
            # since June 2020 (requests are SigV4 either way; MAX_PRESIGN_SECONDS is SigV4's)
            signature_version="s3v4",
            connect_timeout=opts.get("connect_timeout", 5.0),
            read_timeout=opts.get("read_timeout", 60.0),
            # botocore's "max_attempts" counts retries only; the total is what retries + 1 means
            retries={"total_max_attempts": opts.get("retries", 3) + 1, "mode": "standard"},
            s3={"addressing_style": opts.get("addressing_style", "auto")},
            # each put's parts in flight, and a read, stat or commit per put thread
            max_pool_connections=max(10, opts.get("concurrent_puts", CONCURRENT_PUTS)
                                     * (opts.get("max_concurrency", 2) + 1)),
        )
        try:  # an unknown ?profile=, a malformed ~/.aws/config
            return _session(boto3, key, secret, opts).client("s3", endpoint_url=opts.get("endpoint_url"),
                                                              config=config)
        except Exception as e:
            if _credential_error(e):
                raise translate_error(e, "opening the store") from e
            raise

    def describe(self) -> str:
        return self._url_text

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, op: str, key: str | None, **kwargs: Any) -> Any:
        fn: Callable[..., Any] = getattr(self.client, op)
        with self._translated(f"{op} {key!r}" if key else op):
            return fn(**kwargs)

    @contextlib.contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        """botocore's and urllib3's errors inside as statekit's (:func:`translate_error`)."""
        try:
            yield
        except Exception as e:
            if isinstance(e, StatekitError):
                raise
            mod = type(e).__module__
            if mod.startswith(("botocore", "urllib3")):
                endpoint = self.client.meta.endpoint_url
                raise translate_error(e, what, bucket=self.bucket, endpoint=endpoint) from e
            raise

    def check_bucket(self) -> None:
        """``HeadBucket``: the bucket exists and these credentials reach it.

        :raises ConfigError: the bucket does not exist, or no credentials.
        :raises BackendUnavailable: S3 did not answer."""
        try:
            self._call("head_bucket", None, Bucket=self.bucket)
        except BlobNotFound as e:  # HEAD has no body: a 404 is the bucket's
            raise _missing_bucket(self.bucket, "head_bucket", self.client.meta.endpoint_url) from e.__cause__
        self._bucket_seen = True

    def _if_absent(self, key: str) -> dict[str, str]:
        """The arguments that make a write of *key* a create (``If-None-Match: *``), or,
        for a store without conditional writes, none after a ``HEAD`` that refuses an
        existing key (racy, documented). :raises BlobExists:"""
        if self.conditional_writes:
            return {"IfNoneMatch": "*"}
        self._refuse_existing(key)
        return {}

    def _refuse_existing(self, key: str) -> None:
        """Best-effort check for stores without conditional writes (racy, documented)."""
        with contextlib.suppress(BlobNotFound):
            self._call("head_object", key, Bucket=self.bucket, Key=self._full(key))
            raise BlobExists(f"a blob already exists under {key!r}")

    # -- contract ------------------------------------------------------------------
    def writer(self, req: WriteRequest) -> BlobWriter:
        return _S3Writer(self, req)

    def _head(self, key: str) -> dict[str, Any]:
        """The object's ``HEAD``. Its 404 has no body to tell a missing key from a
        missing bucket: until the bucket was once seen, a 404 checks it (one
        ``HeadBucket``), so a missing bucket is the :class:`ConfigError` it is, not a
        :class:`BlobNotFound`. :raises BlobNotFound:"""
        try:
            resp: dict[str, Any] = self._call("head_object", key, Bucket=self.bucket, Key=self._full(key))
        except BlobNotFound:
            if not self._bucket_seen:
                with contextlib.suppress(BackendUnavailable, BlobError):  # the key's 404 stands
                    self.check_bucket()
            raise
        return resp

    def open(self, key: str) -> BinaryIO:
        size = int(self._head(key)["ContentLength"])
        raw = _RangeReader(self, key, size, self.read_window)
        return io.BufferedReader(raw, buffer_size=256 * 1024)

    def stat(self, key: str) -> Blob:
        """The object's record (a ``HEAD``; for a multipart object, its SHA-256 tag too).

        ``sha256`` is ``None`` when no digest was recorded (an object statekit did not
        write, or whose tag could not be written: logged then), or when these
        credentials may not read tags (``s3:GetObjectTagging`` refused, or a store
        without tags: logged once per store). Any other failure to read the tag
        raises, as the ``HEAD``'s would: :class:`BackendUnavailable` for an outage,
        :class:`BlobNotFound` for an object deleted meanwhile.
        """
        head = self._head(key)
        sha = None
        if META_SHA256 not in head.get("Metadata", {}) and "-" in str(head.get("ETag", "")):
            sha = self._tagged_sha256(key)  # multipart: the tag holds it
        return self._record(key, head, sha)

    def head(self, key: str) -> Blob:
        """The object's record from its ``HEAD`` alone: a multipart object's tag is not
        read (``sha256`` ``None``)."""
        return self._record(key, self._head(key), None)

    @staticmethod
    def _record(key: str, head: dict[str, Any], sha256: str | None) -> Blob:
        return stored_blob(key, int(head["ContentLength"]), head.get("ContentType"), head.get("Metadata", {}),
                           head.get("LastModified"), sha256=sha256)

    def _tagged_sha256(self, key: str) -> str | None:
        """The SHA-256 tag of the multipart object *key*; ``None`` without one, or when
        reading tags is refused (these credentials lack ``s3:GetObjectTagging``, or the
        store has no tags: 501). That is a setting, not an outage: the record's other
        fields, which Django's ``size()`` and ``exists()`` read, stay readable with the
        permissions they need (logged once). :raises BackendUnavailable:
        :raises BlobNotFound:"""
        try:
            tags = self._call("get_object_tagging", key, Bucket=self.bucket, Key=self._full(key))
        except BlobNotFound:
            raise
        except (BackendUnavailable, BlobError) as e:
            status = getattr(e.__cause__, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(e, BackendUnavailable) and status != 501:  # 501: a store without tags
                raise
            if not self._tags_refused:
                self._tags_refused = True
                _log.warning("%s: reading the SHA-256 tag of multipart blobs was refused (%s): stat() "
                             "reports sha256=None for them; grant s3:GetObjectTagging to read it "
                             "(or use a store with object tags)", self.describe(), e)
            return None
        found: str | None = {t["Key"]: t["Value"] for t in tags.get("TagSet", [])}.get(META_SHA256)
        return found

    def delete(self, key: str) -> bool:
        """A ``HEAD``, then a ``DELETE`` of the version it found (``If-Match`` its ETag):
        ``True`` when this call removed it. If another delete removed it in between (and
        perhaps a write of the key stored a new object), S3 answers 404 or 412: ``False``,
        and the new object stays whole. A plain ``DELETE`` there reported ``True`` for an
        object the other delete had removed (two ``True`` for one object), or removed the
        new one. When botocore sent the ``DELETE`` again (its answer was lost) and the
        retry finds the object gone, the first attempt may have removed it: ``True``.
        With ``conditional_writes=false`` the ``DELETE`` is unconditional (racy so)."""
        try:
            head = self._head(key)
        except BlobNotFound:
            return False
        cond = {"IfMatch": head["ETag"]} if self.conditional_writes and head.get("ETag") else {}
        try:
            self._call("delete_object", key, Bucket=self.bucket, Key=self._full(key), **cond)
        except (BlobNotFound, BlobExists) as e:  # 404 / 412: not the version this call found
            meta = getattr(e.__cause__, "response", {}).get("ResponseMetadata", {})
            return bool(meta.get("RetryAttempts"))
        return True

    def list_page(self, prefix: str, cursor: str | None, page_size: int) -> BlobPage:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._full(prefix), "MaxKeys": page_size}
        if cursor:
            kwargs["ContinuationToken"] = cursor
        resp = self._call("list_objects_v2", None, **kwargs)
        cut = len(self.prefix) + 1 if self.prefix else 0
        items = []
        for obj in resp.get("Contents", []):
            items.append(Blob(obj["Key"][cut:], int(obj["Size"]), created=obj.get("LastModified")))
        return BlobPage(items, resp.get("NextContinuationToken") if resp.get("IsTruncated") else None)

    def list_dir(self, prefix: str) -> tuple[list[str], list[str]]:
        """One level, as S3 lists it (``Delimiter="/"``): its common prefixes and objects."""
        base = self._full(prefix)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": base, "Delimiter": "/"}
        dirs: list[str] = []
        files: list[str] = []
        while True:
            resp = self._call("list_objects_v2", None, **kwargs)
            dirs += [p["Prefix"][len(base):].rstrip("/") for p in resp.get("CommonPrefixes", [])]
            files += [obj["Key"][len(base):] for obj in resp.get("Contents", [])]
            if not resp.get("IsTruncated"):
                return sorted(dirs), sorted(files)
            kwargs["ContinuationToken"] = resp["NextContinuationToken"]

    # -- URLs and direct uploads ---------------------------------------------------------
    def presign_get(self, key: str, expires: int, disposition: str | None) -> str:
        presign_seconds(expires)
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key)}
        if disposition:
            params["ResponseContentDisposition"] = disposition
        with self._translated(f"presigning {key!r}"):  # signed here: credentials are needed
            url: str = self.presign_client.generate_presigned_url("get_object", Params=params,
                                                                  ExpiresIn=expires)
        return url

    def presign_post(
        self, key: str, max_size: int, type_prefix: str, expires: int
    ) -> tuple[str, dict[str, str]]:
        full = self._full(self.upload_target(key))
        conditions: list[Any] = [["content-length-range", 0, max_size],
                                 ["starts-with", "$Content-Type", type_prefix],
                                 ["starts-with", "$key", full.rsplit("/", 1)[0] + "/"]]
        with self._translated(f"presigning {key!r}"):
            post = self.presign_client.generate_presigned_post(Bucket=self.bucket, Key=full,
                                                               Conditions=conditions, ExpiresIn=expires)
        return str(post["url"]), {k: str(v) for k, v in post["fields"].items()}

    def upload_target(self, key: str) -> str:
        return RESERVED_PREFIX + "incoming/" + key

    def accept_upload(self, target: str, key: str) -> None:
        """Copy the browser's upload to *key*, only if nothing is there (``If-None-Match:
        *`` on the copy, as on every write): a form sent again after a confirm never
        replaces the accepted blob. :raises BlobExists:"""
        cond = self._if_absent(key)
        self._call("copy_object", key, Bucket=self.bucket, Key=self._full(key),
                   CopySource={"Bucket": self.bucket, "Key": self._full(target)}, MetadataDirective="COPY",
                   **cond)

    def cleanup_partial(self, older_than: float) -> int:
        """Abort multipart uploads under the store prefix started before the cutoff."""
        cutoff, removed = time.time() - older_than, 0
        for up in self.list_incomplete():
            if up["Initiated"].timestamp() <= cutoff:
                with contextlib.suppress(BlobNotFound):
                    self._call("abort_multipart_upload", up["Key"], Bucket=self.bucket, Key=up["Key"],
                               UploadId=up["UploadId"])
                    removed += 1
        return removed

    def list_incomplete(self) -> list[dict[str, Any]]:
        """Multipart uploads in progress under the store prefix (``Key``, ``UploadId``,
        ``Initiated``), for monitoring and :meth:`cleanup_partial`."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + "/" if self.prefix else ""}
        found: list[dict[str, Any]] = []
        while True:
            resp = self._call("list_multipart_uploads", None, **kwargs)
            found += resp.get("Uploads", [])
            if not resp.get("IsTruncated"):
                return found
            kwargs.update(KeyMarker=resp.get("NextKeyMarker"), UploadIdMarker=resp.get("NextUploadIdMarker"))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()

