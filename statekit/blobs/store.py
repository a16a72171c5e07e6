"""The :class:`BlobStore` façade: the put pipeline, limits, keys, signed URLs and
direct uploads, implemented once over any :class:`~statekit.blobs.protocol.BlobBackend`."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import functools
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from ..backends import load_backend, require
from ..config import SCHEMES, number, parse_size, parse_url, url_and_scheme
from ..errors import (
    BlobError,
    BlobExists,
    BlobNotFound,
    BlobTooLarge,
    ConfigError,
    ContentTypeMismatch,
    DisallowedContentType,
)
from ..metrics import Counters
from .keys import (
    RESERVED_PREFIX,
    content_disposition,
    generate_key,
    sanitize_filename,
    validate_key,
    validate_prefix,
)
from .protocol import (
    META_CREATED,
    META_FILENAME,
    META_SHA256,
    Blob,
    BlobBackend,
    BlobPage,
    BlobWriter,
    PresignedUpload,
    WriteRequest,
    encode_meta,
    stored_blob,
)
from .sniff import SNIFF_BYTES, check_content_type, normalize_type, type_allowed, upload_type
from .source import READ_CHUNK, Source

__all__ = ["BUILTIN_BACKENDS", "BlobStore", "backend_class", "open_blob_store", "require_extras"]

#: the built-in schemes; another distribution adds one with an entry point in the
#: group ``statekit.blobs`` (see :mod:`statekit.blobs.protocol`)
BUILTIN_BACKENDS = {
    "s3": "statekit.blobs.s3:S3Backend",
    "file": "statekit.blobs.local:LocalBackend",
    "memory": "statekit.blobs.memory:MemoryBackend",
}
#: where the policy of each pending direct upload is kept, as a small JSON object
_PENDING = RESERVED_PREFIX + "pending/"
#: where :meth:`BlobStore.receive_upload` keeps a direct upload until it is confirmed
_STAGED = RESERVED_PREFIX + "incoming/"
#: where the fate of a pending direct upload is decided, once: ``confirmed`` by
#: :meth:`BlobStore.confirm` or ``expired`` by :meth:`BlobStore.cleanup_incomplete`
#: (see :meth:`BlobStore._decide`)
_VERDICT = RESERVED_PREFIX + "verdict/"
_CONFIRMED, _EXPIRED = "confirmed", "expired"
#: how long a verdict is left to its holder, whatever ``older_than`` a cleanup is given:
#: younger, it is neither taken over nor removed. Its holder's few backend calls end
#: well within it (each has a timeout); processes' clocks must agree within it.
_VERDICT_LEASE = 3600.0


def require_extras(scheme: str) -> None:
    """Raise a :class:`ConfigError` with the ``pip install`` line when a package a
    *scheme*'s blob store needs is missing (``boto3`` for ``s3``; ``puremagic``, which
    sniffs every upload, for all), so a store fails where it is opened, not at the
    first upload."""
    modules = ("boto3", "puremagic") if scheme == "s3" else ("puremagic",)
    missing = []
    for module in modules:
        try:
            require(module, feature="blob stores")
        except ConfigError:
            missing.append(repr(module))
    if missing:
        raise ConfigError(f"{scheme}:// blob stores need {' and '.join(missing)}: "
                          "pip install 'statekit[blobs]'")


def backend_class(url: str) -> type[BlobBackend]:
    """The backend class for *url*'s scheme, built in or registered by entry point.

    :raises ConfigError: a malformed URL, a scheme no backend serves, or a missing
        extra (the message names the ``pip install``)."""
    url, scheme = url_and_scheme(url)
    if not scheme or scheme in SCHEMES:  # statekit's own grammar: its errors name the problem
        scheme = parse_url(url, kinds=tuple(BUILTIN_BACKENDS)).kind
    require_extras(scheme)
    cls: type[BlobBackend] = load_backend("blobs", scheme, BUILTIN_BACKENDS)
    return cls


def _byte_count(max_size: Any) -> int:
    """*max_size* (a put's limit, the store's default) as a number of bytes.

    :raises ConfigError: it is not a whole number of bytes, 0 or more."""
    return parse_size(max_size, name="max_size", text=False)


def _seconds(expires: Any) -> int:
    """*expires* (a URL's or an upload form's lifetime) in whole seconds.

    :raises ValueError: it is no finite number (or its text) of at least 1 s (``inf``,
        ``nan``, a word, ``None``, ``0.5``: 0 whole seconds)."""
    return int(number(expires, "expires", minimum=1, unit="seconds", error=ValueError))


class BlobStore:
    """Uploaded files in a store chosen by URL: ``BlobStore("s3://bucket/prefix?...")``,
    ``BlobStore("file:///srv/uploads")``, ``BlobStore("memory://")``, or a scheme
    another distribution registers.

    :param backend: a ready backend instead of *url* (``S3Backend(client=...,
        bucket=...)``).
    :param max_size: the default limit of :meth:`put`.
    :param allowed_types: the default allow-list of :meth:`put` and :meth:`confirm`.
    :param secret: signs URLs and upload forms of stores that do not presign their own
        (default: random per process, so links do not survive a restart).
    :param options: passed to the backend (``part_size=``, ``root=``...).

    Safe to share between threads. Backend outages raise
    :class:`~statekit.errors.BackendUnavailable`; a failed write leaves nothing visible
    (what an abort could not undo, :meth:`cleanup_incomplete` removes). Attributes of
    the backend (an S3 store's ``client`` and ``bucket``) read through the store.
    """

    backend: BlobBackend

    def __init__(self, url: str | None = None, *, backend: BlobBackend | None = None,
                 max_size: int | None = None, allowed_types: Sequence[str] | None = None,
                 secret: str | bytes | None = None, **options: Any) -> None:
        if backend is None:
            if url is None:
                raise ConfigError("BlobStore needs a URL (s3://, file://, memory://) or backend=")
            url = url_and_scheme(url)[0]  # as pasted from an env file: the backend gets it stripped
            backend = backend_class(url)(url, **options)  # type: ignore[call-arg]
        elif url is not None or options:
            raise ConfigError("BlobStore takes a URL (with its options) or backend=, not both")
        else:
            require_extras(backend.scheme)
        self.backend = backend
        self.max_size = _byte_count(max_size) if max_size is not None else None
        self.allowed_types = list(allowed_types) if allowed_types is not None else None
        self._secret = (secret.encode() if isinstance(secret, str) else secret) or secrets.token_bytes(32)
        self.counters = Counters("blobs", self.describe(), names=("puts", "aborts", "bytes_written"))

    def __getattr__(self, name: str) -> Any:
        if name == "backend" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.backend, name)

    @property
    def scheme(self) -> str:
        """The backend's URL scheme (``"s3"``)."""
        return self.backend.scheme

    def describe(self) -> str:
        """A short, password-free name of the store (for counters and errors)."""
        return self.backend.describe()

    # -- writing -------------------------------------------------------------------
    def put(
        self,
        stream: Any,
        *,
        filename: str | None = None,
        content_type: str | None = None,
        max_size: int | None = None,
        allowed_types: Sequence[str] | None = None,
        metadata: Mapping[str, str] | None = None,
        prefix: str = "",
        date_path: bool = True,
    ) -> Blob:
        """Store *stream* under a new generated key and return its :class:`Blob`.

        :param stream: a werkzeug ``FileStorage``, a Django ``UploadedFile``, a binary
            file object, ``bytes``, or an iterable of ``bytes``. Its filename and type
            are taken from it unless given.
        :param filename: the user's filename; kept sanitized in metadata, never used
            as the key.
        :param content_type: the declared type, checked against the sniffed one; without
            it the input's or the filename's counts (:func:`~statekit.blobs.sniff.upload_type`).
        :param max_size: refuse more than this many bytes (checked before reading
            when the size is known, else while reading: at most one chunk past it).
        :param allowed_types: allowed types, ``"image/*"`` patterns accepted.
        :param metadata: extra string metadata (keys: lowercase letters, digits, ``-``;
            at most 2 KB with the filename, as S3 stores:
            :data:`~statekit.blobs.protocol.MAX_METADATA_BYTES`).
        :param prefix: a key prefix (``"avatars"``) placed before the date.
        :param date_path: ``False``: no ``YYYY/MM/DD/`` after *prefix*, which is then the
            key's whole directory (Django's ``BlobStorage``: ``upload_to`` lays keys out).
        :raises BlobTooLarge, ContentTypeMismatch, DisallowedContentType: the upload was
            refused; nothing is stored.
        :raises BlobError: *metadata* has a key that is not allowed, or is more than
            S3 stores (2 KB, the filename included): refused before the body is read.
        :raises BackendUnavailable: the backend failed; nothing is stored. When the
            final write's reply was lost (S3: the commit may have been applied), the
            message says the outcome is unknown: the write is never sent again, and
            what may have been stored under the (generated) key was deleted, or the
            message names the key when that delete failed too.
        :raises ConfigError: the store cannot work as configured (S3: no usable
            credentials, or no such bucket); nothing was sent, or nothing is stored.

        Memory stays bounded (a read chunk plus the backend's part buffers). Any
        exception, including one raised by *stream* itself, aborts the write.
        """
        limit = self.limit(max_size)
        allowed = allowed_types if allowed_types is not None else self.allowed_types
        source = Source(stream, limit)
        name = sanitize_filename(filename if filename is not None else source.filename)
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        meta = {k: v for k, v in (metadata or {}).items() if k not in (META_FILENAME, META_SHA256)}
        if name:
            meta[META_FILENAME] = name
        meta[META_CREATED] = now.isoformat()
        encoded = encode_meta(meta)  # checked before the body is read
        head = source.head(SNIFF_BYTES)
        ctype = upload_type(head[:SNIFF_BYTES], content_type or source.content_type,
                            explicit=content_type is not None, filename=name, allowed=allowed)
        req = WriteRequest(generate_key(ctype, prefix=prefix, now=now, date_path=date_path), ctype,
                           content_disposition(name), encoded, now, source.size_hint)
        sha256, size = self._write(req, iter(source))
        self.counters.incr("puts")
        self.counters.incr("bytes_written", size)
        return stored_blob(req.key, size, ctype, req.metadata, now, sha256=sha256)

    def limit(self, max_size: int | None = None) -> int | None:
        """The limit a :meth:`put` given *max_size* holds an upload to: *max_size*,
        else the store's ``max_size`` (``None``: no limit).

        :raises ConfigError: *max_size* is not a whole number of bytes, 0 or more."""
        return _byte_count(max_size) if max_size is not None else self.max_size

    def _write(self, req: WriteRequest, chunks: Iterator[bytes]) -> tuple[str, int]:
        """Send *chunks* through one backend writer; on any exception abort it and
        re-raise (what an abort cannot undo, :meth:`cleanup_incomplete` removes)."""
        writer: BlobWriter = self.backend.writer(req)
        digest, size = hashlib.sha256(), 0
        try:
            for data in chunks:
                if data:
                    digest.update(data)
                    size += len(data)
                    writer.write(data)
            writer.commit(digest.hexdigest(), size)
        except BaseException:
            self.counters.incr("aborts")
            try:
                writer.abort()
            except Exception:  # noqa: S110 - the original error matters more; cleanup_incomplete finishes
                pass
            raise
        return digest.hexdigest(), size

    # -- reading -------------------------------------------------------------------
    def open(self, key: str) -> BinaryIO:
        """A read-only, seekable binary stream of the blob. Data is fetched in ranges
        as it is read; nothing is downloaded whole. :raises BlobNotFound:"""
        return self.backend.open(validate_key(key))

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """Up to *length* bytes from offset *start* (fewer at the end of the blob).

        :raises ValueError: *start* or *length* is negative."""
        validate_key(key)
        if start < 0 or length < 0:
            raise ValueError(f"start and length must not be negative (start={start!r}, length={length!r})")
        return self.backend.read_range(key, start, length)

    def stat(self, key: str, *, sha256: bool = True) -> Blob:
        """The blob's :class:`Blob` record. Without *sha256* its ``sha256`` may be
        ``None`` where reading it costs another request (S3: a multipart blob's tag),
        for a caller that wants the size, the type or a date. :raises BlobNotFound:"""
        validate_key(key)
        return self.backend.stat(key) if sha256 else self.backend.head(key)

    def exists(self, key: str) -> bool:
        try:
            self.stat(key, sha256=False)
        except BlobNotFound:
            return False
        return True

    def delete(self, key: str) -> bool:
        """Delete the blob; ``True`` if it existed. Idempotent."""
        return self.backend.delete(validate_key(key))

    def list_page(self, prefix: str = "", *, cursor: str | None = None, page_size: int = 1000) -> BlobPage:
        """One page of blobs whose key starts with *prefix*, in key order. statekit's
        own objects are left out, so a page may hold fewer than *page_size* items:
        only ``cursor`` ``None`` ends the listing."""
        if prefix and not prefix.endswith("/"):
            validate_key(prefix)
        elif prefix:
            validate_prefix(prefix)
        if not 1 <= page_size <= 1000:
            raise ConfigError("page_size must be between 1 and 1000")
        page = self.backend.list_page(prefix, cursor, page_size)
        visible = [b for b in page.items if not b.key.startswith(".") and "/." not in b.key]
        return BlobPage(visible, page.cursor)

    def list_dir(self, prefix: str = "") -> tuple[list[str], list[str]]:
        """One level below the "directory" *prefix* (``"avatars"``; ``""``: the top):
        the names of its subdirectories (the next segment of deeper keys) and of the
        blobs directly in it, each sorted -- Django's ``Storage.listdir``. Reads that
        level only where the backend can (S3, ``file://``), not every key below it.
        statekit's own objects are left out."""
        dirs, files = self.backend.list_dir(validate_prefix(prefix))
        return ([d for d in dirs if d and not d.startswith(".")],
                [f for f in files if f and not f.startswith(".")])

    def list(self, prefix: str = "", *, page_size: int = 1000) -> Iterator[Blob]:
        """Every blob under *prefix*, fetched a page at a time."""
        return _pages(lambda cursor: self.list_page(prefix, cursor=cursor, page_size=page_size))

    # -- URLs ----------------------------------------------------------------------
    def url(self, key: str, *, expires: int = 3600, download_name: str | None = None) -> str:
        """A URL that reads the blob for *expires* seconds, served as an attachment
        named *download_name* (default: the original filename). S3 gives a presigned
        GET (no request is made; the object's stored ``Content-Disposition`` applies
        unless *download_name* overrides it); other stores a URL signed with the
        store's secret, checked by :meth:`verify_url`.

        :raises ValueError: *expires* is not positive, or (S3) longer than the 7 days
            a SigV4 presigned URL can last (S3 would refuse the link when used)."""
        validate_key(key)
        expires = _seconds(expires)
        disposition = content_disposition(download_name) if download_name else None
        url = self.backend.presign_get(key, expires, disposition)
        if url is None:
            params = self.signed_params(key, expires=expires, disposition=disposition)
            url = f"{self.describe()}/{quote(key)}?{urlencode(params)}"
        return url

    def signed_params(self, key: str, *, expires: int, disposition: str | None = None) -> dict[str, str]:
        """Query parameters that grant reading *key* for *expires* seconds (non-S3
        stores): ``expires``, ``disposition`` (default: attachment with the original
        filename) and an HMAC ``signature`` with the store's ``secret``. A web app
        serves them with a view that calls :meth:`check_params` (the Flask adapter
        does).

        :raises ValueError: *expires* is not a positive number of seconds (as for
            :meth:`url`)."""
        validate_key(key)
        expires = _seconds(expires)
        if disposition is None:
            try:
                disposition = content_disposition(self.stat(key).filename)
            except BlobNotFound:  # as a presigned S3 URL: made without a request, it reads as a 404
                disposition = content_disposition(None)
        params = {"expires": str(int(time.time()) + expires), "disposition": disposition}
        params["signature"] = self._sign(key, params)
        return params

    def check_params(self, key: str, params: Mapping[str, str]) -> str:
        """Verify :meth:`signed_params` for *key*; return the ``Content-Disposition``
        to serve. :raises BlobError: tampered with or expired."""
        validate_key(key)
        signed = {k: params[k] for k in ("expires", "disposition") if k in params}
        self._verify(key, signed, str(params.get("signature", "")), "URL")
        return signed.get("disposition", "attachment")

    def _sign(self, key: str, params: Mapping[str, str]) -> str:
        msg = json.dumps([key, sorted((k, v) for k, v in params.items() if k != "signature")]).encode()
        return base64.urlsafe_b64encode(hmac.new(self._secret, msg, "sha256").digest()).decode().rstrip("=")

    def _verify(self, key: str, signed: Mapping[str, str], signature: str, what: str) -> None:
        """:raises BlobError: *signature* is not this store's for *key* and *signed*, or
        their ``expires`` has passed."""
        expected = self._sign(key, signed).encode()
        # bytes: compare_digest refuses a non-ASCII str, which any query string can carry
        if not hmac.compare_digest(signature.encode("utf-8", "surrogatepass"), expected):
            raise BlobError(f"{what} signature does not match")
        try:
            expired = int(signed.get("expires", "0")) < time.time()
        except ValueError:
            expired = True
        if expired:
            raise BlobError(f"{what} has expired")

    def verify_url(self, url: str) -> tuple[str, str]:
        """Check a URL made by :meth:`url` (non-S3 stores); return ``(key,
        content_disposition)``. :raises BlobError: foreign, tampered or expired."""
        parts = urlsplit(url)
        base = self.describe().rstrip("/")
        whole = f"{parts.scheme}://{parts.netloc}{parts.path}"
        if not whole.startswith(base + "/"):
            raise BlobError("URL does not belong to this store")
        key = unquote(whole[len(base) + 1:])
        return key, self.check_params(key, dict(parse_qsl(parts.query)))

    # -- direct uploads ------------------------------------------------------------
    def presign_upload(self, *, max_size: int, content_type_prefix: str = "", expires: int = 3600,
                       prefix: str = "") -> PresignedUpload:
        """Let a browser upload one file directly (S3: a presigned POST with
        ``content-length-range``, ``Content-Type`` prefix and exact-key conditions).

        The key is recorded as pending; call :meth:`confirm` after the browser is done.
        Unconfirmed uploads are removed by :meth:`cleanup_incomplete`.

        :raises ValueError: *expires* is not a positive number of seconds (as for
            :meth:`url`), or too far off to be a date; nothing is recorded.
        """
        if _byte_count(max_size) == 0:
            raise ConfigError("max_size must be positive")
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        expires = _seconds(expires)
        try:
            expiry = now + dt.timedelta(seconds=expires)
        except OverflowError:
            raise ValueError(f"expires={expires!r} is too far off to be a date") from None
        key = generate_key(None, prefix=prefix, now=now)
        form = self.backend.presign_post(key, max_size, content_type_prefix, expires)
        policy = {"max_size": max_size, "content_type_prefix": content_type_prefix,
                  "created": now.timestamp(), "expires": now.timestamp() + expires,
                  "staged": form is None}  # received by receive_upload under _STAGED
        if form is None:
            fields = {"key": key, "Content-Type": content_type_prefix,
                      "expires": str(int(time.time()) + expires), "max_size": str(max_size)}
            fields["signature"] = self._sign(key, fields)
            form = f"{self.describe()}/", fields
        marker = WriteRequest(_PENDING + key, "application/json", "attachment", {}, now)
        self._write(marker, iter([json.dumps(policy).encode()]))
        return PresignedUpload(form[0], form[1], key, expiry, max_size, content_type_prefix)

    def receive_upload(
        self, fields: Mapping[str, str], stream: Any, *, content_type: str | None = None
    ) -> None:
        """The server side of a presigned upload for stores without one of their own
        (``file://``, ``memory://``): check the signature and key, store the bytes
        as sent. Like S3, it holds the body to the signed ``max_size`` while it streams
        (:class:`BlobTooLarge`, nothing stored) and otherwise trusts the client;
        :meth:`confirm` enforces the rest of the policy. As on S3, the bytes are kept
        apart (under ``.statekit/``) until :meth:`confirm` accepts them: before that
        nothing is visible, listed or served under *key*. A form sent again is refused
        (:class:`~statekit.errors.BlobExists`, or :class:`BlobNotFound` once confirmed)."""
        key = validate_key(fields.get("key", ""))
        self._verify(key, fields, fields.get("signature", ""), "upload form")
        if self._policy(key) is None:
            raise BlobNotFound(f"no pending upload {key!r}")
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        ctype = normalize_type(content_type or fields.get("Content-Type")) or "application/octet-stream"
        meta = encode_meta({META_CREATED: now.isoformat()})
        req = WriteRequest(_STAGED + key, ctype, "attachment", meta, now)
        self._write(req, iter(Source(stream, int(fields.get("max_size", "0")))))

    def confirm(self, key: str, *, allowed_types: Sequence[str] | None = None) -> Blob:
        """Check a direct upload against its policy and accept it.

        Reads the size (HEAD) and the first bytes (a ranged GET) only. If the object
        is larger than the presigned ``max_size``, its sniffed type contradicts its
        ``Content-Type`` or the allowed prefix, or it is not of *allowed_types* (by
        default the store's ``allowed_types``, as for :meth:`put`), it is deleted and
        the error raised.
        Idempotent: confirming an accepted upload returns its record. The form
        uploads to a staging key (S3's own, or :meth:`receive_upload`'s under
        ``.statekit/``) that this copies to *key* and deletes: nothing unchecked is
        ever visible under *key*, and a form sent again after the check only
        reaches the staging key, never the accepted blob. Against a
        :meth:`cleanup_incomplete` that judges the same upload stale at the same moment,
        one of the two decides (:meth:`_decide`): a confirm that returns has kept the
        blob, one that lost raises :class:`BlobNotFound` and leaves nothing behind.
        So do two confirms of one upload at once (a form sent twice): the second
        returns the blob the first accepted, or raises when its *allowed_types* refuse
        it, and then leaves the blob to the first.
        :raises BlobNotFound: nothing was uploaded (the pending marker stays), or the
        upload expired and was removed by :meth:`cleanup_incomplete`.
        :raises BlobError: another process is recording its verdict; try again.
        """
        validate_key(key)
        allowed = allowed_types if allowed_types is not None else self.allowed_types
        backend = self.backend
        raw = self._policy(key)
        if raw is None:
            return backend.stat(key)
        policy = json.loads(raw)
        target = _STAGED + key if policy.get("staged") else backend.upload_target(key)
        if target != key:  # the checks below run on the copy, which no replayed form can reach
            with contextlib.suppress(BlobNotFound, BlobExists):  # nothing sent / a racing confirm copied it
                if policy.get("staged"):  # received by receive_upload
                    self._copy(target, key)
                elif not self.exists(key):  # a backend's copy may replace what another confirm checked
                    backend.accept_upload(target, key)
        blob = backend.stat(key)
        try:
            if blob.size > int(policy["max_size"]):
                raise BlobTooLarge(f"direct upload of {blob.size} bytes exceeds {policy['max_size']}")
            head = backend.read_range(key, 0, SNIFF_BYTES)
            check_content_type(head, blob.content_type, allowed)
            type_prefix = str(policy["content_type_prefix"])
            final = check_content_type(head, blob.content_type)
            if type_prefix and not type_allowed(final, [type_prefix + "*"]):
                raise DisallowedContentType(f"direct upload is not of type {type_prefix}*")
        except (BlobTooLarge, ContentTypeMismatch, DisallowedContentType):
            held, verdict, _ = self._decide(key, _EXPIRED)  # refused: removed, unless accepted first
            if held:
                self._carry_out(key, _EXPIRED)
            elif verdict == _EXPIRED:  # removed elsewhere: the copy above may have come after its delete
                backend.delete(key)
            raise
        held, verdict, _ = self._decide(key, _CONFIRMED)
        if verdict == _EXPIRED:  # judged first (a cleanup, or a confirm that refused it): removed
            backend.delete(key)  # the copy above may have come after its delete
            raise BlobNotFound(f"direct upload {key!r} expired (or was refused): removed before this "
                               f"call could confirm it")
        if not verdict:
            raise BlobError(f"the direct upload {key!r} is being decided elsewhere; try again")
        if held and self._carry_out(key, _CONFIRMED):
            return blob
        return backend.stat(key)  # accepted by the confirm that holds the verdict

    def _copy(self, source: str, key: str) -> None:
        """Write the object *source* to the new key *key*, streamed, with its type and
        creation time. :raises BlobNotFound: no *source*. :raises BlobExists:"""
        found = self.backend.stat(source)
        created = found.created or dt.datetime.now(dt.timezone.utc)
        req = WriteRequest(key, found.content_type or "application/octet-stream", "attachment",
                           encode_meta({META_CREATED: created.isoformat()}), created, found.size)
        with self.backend.open(source) as f:
            self._write(req, iter(functools.partial(f.read, READ_CHUNK), b""))

    def _drop_upload(self, key: str, *, blob: bool) -> None:
        """Forget the direct upload of *key*: its staged copy, its marker, and with
        *blob* the blob itself."""
        if blob:
            self.backend.delete(key)
        self.backend.delete(_PENDING + key)
        for target in {_STAGED + key, self.backend.upload_target(key)} - {key}:
            self.backend.delete(target)

    def _decide(self, key: str, verdict: str) -> tuple[bool, str, float]:
        """Record *verdict* as the fate of the direct upload of *key*, unless one is
        recorded: ``(held, the verdict that stands, when it was recorded)``, *held*
        when this call recorded it; the verdict is ``""`` when the record stayed
        unreadable (being written) while this call waited. The caller then carries
        out the verdict it holds (:meth:`_carry_out`).

        One record per upload, created only if absent (every backend's writes never
        overwrite: S3's conditional create, ``link`` on disk), and never replaced: the
        first :meth:`confirm` (accepting or refusing) or :meth:`cleanup_incomplete` to
        record its verdict decides, and every later one, even one that read the
        pending marker before it went, reads that verdict and follows it. The record
        stays until a cleanup finds it older than the lease (:data:`_VERDICT_LEASE`).
        A write stored whose caller still saw it refused (S3 answers a request
        retried after a lost answer with 412) is recognised as this call's own."""
        name = _VERDICT + key
        for attempt in range(5):
            at = round(time.time(), 6)
            now = dt.datetime.fromtimestamp(int(at), dt.timezone.utc)
            try:
                self._write(WriteRequest(name, "text/plain", "attachment", {}, now),
                            iter([f"{verdict} {at:.6f}".encode()]))
                return True, verdict, at
            except BlobExists:
                pass
            recorded = self._verdict(key)
            if recorded == (verdict, at):
                return True, verdict, at
            if recorded is not None and (recorded[0] or attempt == 4):
                return (False, *recorded)
            if recorded is not None:  # being written: its bytes come next
                time.sleep(0.05 * (attempt + 1))
            # else removed by a cleanup past the lease between the two calls: decide again
        raise BlobError(f"the direct upload {key!r} is being decided elsewhere; try again")

    def _verdict(self, key: str) -> tuple[str, float] | None:
        """The recorded verdict on the direct upload of *key* and when it was recorded,
        or ``None``. A record that does not parse is being written (a filesystem
        without hard links claims the name empty, then renames the bytes over it): its
        verdict is ``""`` within the lease, ``expired`` after (its writer stopped
        before it could act on it)."""
        name = _VERDICT + key
        try:
            raw = self.backend.read_range(name, 0, 64).decode("ascii", "replace")
            verdict, _, at = raw.partition(" ")
            try:
                return (verdict if verdict == _CONFIRMED else _EXPIRED), float(at)
            except ValueError:
                created = self.backend.stat(name).created
        except BlobNotFound:
            return None
        made = created.timestamp() if created is not None else 0.0
        return ("" if made > time.time() - _VERDICT_LEASE else _EXPIRED), made

    def _carry_out(self, key: str, verdict: str) -> bool:
        """As the holder of the *verdict* that stands on the direct upload of *key*:
        forget the upload if it is still pending, with its blob when ``expired``;
        whether it was. The record stays (see :meth:`_decide`)."""
        if self._policy(key) is None:
            return False
        self._drop_upload(key, blob=verdict == _EXPIRED)
        return True

    def _policy(self, key: str) -> bytes | None:
        """The policy of the pending direct upload of *key* (JSON), or ``None``."""
        try:
            return self.backend.read_range(_PENDING + key, 0, 1 << 16)
        except BlobNotFound:
            return None

    def _internal(self, prefix: str) -> Iterator[Blob]:
        """Every object below statekit's own *prefix* (``.statekit/...``)."""
        return _pages(lambda cursor: self.backend.list_page(prefix, cursor, 1000))

    # -- housekeeping ----------------------------------------------------------------
    def cleanup_incomplete(self, older_than: float = 86400.0) -> int:
        """Remove what interrupted writes left behind more than *older_than* seconds
        ago: S3 multipart uploads are aborted, temporary files removed, and direct
        uploads never confirmed (pending past their expiry) are deleted, as are the
        staged copies of forms sent again after their upload was confirmed (S3).
        Returns how many items were removed. Safe to run from several processes at once,
        and beside :meth:`confirm`: an upload confirmed while it is judged stale is kept
        (the two record one verdict per upload, :meth:`_decide`). A verdict is left to
        its holder for an hour (:data:`_VERDICT_LEASE`) even with ``older_than=0``: a
        process that stopped after recording one is finished after that."""
        removed = self.backend.cleanup_partial(older_than)
        now = time.time()
        for item in list(self._internal(_PENDING)):
            key = item.key[len(_PENDING):]
            raw = self._policy(key)
            if raw is None:  # confirmed or removed by another process meanwhile: not ours to delete
                continue
            try:
                policy = json.loads(raw)
                stale = now > max(float(policy["expires"]), float(policy["created"]) + older_than)
            except (ValueError, KeyError, TypeError):
                stale = True
            if stale and self._expire(key, older_than, now):
                removed += 1
        cutoff = now - max(older_than, _VERDICT_LEASE)
        for item in list(self._internal(_VERDICT)):  # no one acts on them any more
            if item.created is not None and item.created.timestamp() > cutoff:
                continue
            key = item.key[len(_VERDICT):]
            recorded = self._verdict(key)
            if recorded is not None and recorded[1] <= cutoff and self._policy(key) is None:
                self.backend.delete(item.key)
        for staging in {_STAGED, self.backend.upload_target("")} - {""}:
            for item in list(self._internal(staging)):
                old = item.created is not None and item.created.timestamp() <= now - older_than
                if old and self._policy(item.key[len(staging):]) is None:
                    self.backend.delete(item.key)
                    removed += 1
        return removed

    def _expire(self, key: str, older_than: float, now: float) -> bool:
        """Remove the stale direct upload of *key* unless a :meth:`confirm` decided
        its fate first (:meth:`_decide`); whether this call removed it. A verdict
        left by a process that stopped before carrying it out (older than
        *older_than* and the lease) is carried out here."""
        held, verdict, at = self._decide(key, _EXPIRED)
        if not held and (not verdict or at > now - max(older_than, _VERDICT_LEASE)):
            return False  # being carried out now
        return self._carry_out(key, verdict) and verdict == _EXPIRED

    def close(self) -> None:
        """Release connections and files (the store is unusable afterwards)."""
        self.backend.close()

    def __enter__(self) -> BlobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pages(fetch: Callable[[str | None], BlobPage]) -> Iterator[Blob]:
    """The items of every page *fetch* returns, from cursor ``None`` to the last."""
    cursor: str | None = None
    while True:
        page = fetch(cursor)
        yield from page.items
        if page.cursor is None:
            return
        cursor = page.cursor


def open_blob_store(url: str | None = None, **kwargs: Any) -> BlobStore:
    """The store for *url*, or for ``STATEKIT_BLOBS_URL`` when *url* is ``None``."""
    if url is None:
        from ..config import Settings

        url = Settings.from_env().require("blobs_url")
    return BlobStore(url, **kwargs)
