"""Uploaded files in a shared blob store: S3, a shared volume, or memory.

::

    store = BlobStore("s3://bucket/uploads?endpoint_url=http://127.0.0.1:9000")
    blob = store.put(request.files["photo"], max_size=10 * 2**20, allowed_types=["image/*"])
    blob.key        # '2026/11/22/9f0c...e1.png' -- generated, never the user's filename
    store.url(blob.key, expires=300, download_name="holiday.png")

One contract for every backend (``s3://``, ``file://``, ``memory://``):

* :meth:`BlobStore.put` streams the input in parts with bounded memory, computes its
  SHA-256 on the way, enforces ``max_size`` while reading, sniffs the type from the
  first bytes (``puremagic``) and checks it against the declared type and the
  allow-list *before* anything is written. Any failure -- an exception from the input,
  a size or type violation, a backend outage -- aborts the write: no object becomes
  visible under the key, ever.
* Keys are generated (``[prefix/]YYYY/MM/DD/<128-bit random id>.<ext>``), the extension
  comes from the sniffed type, and an existing object is never overwritten
  (conditional create on S3, ``link``/``O_EXCL`` on disk).
* The original filename is kept, sanitized (:func:`sanitize_filename`), in metadata
  and in ``Content-Disposition`` (RFC 6266 / RFC 5987, :func:`content_disposition`).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import mimetypes
import os
import re
import secrets
import time
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from ..backends import require
from ..config import parse_url
from ..errors import (
    BlobError,
    BlobNotFound,
    BlobTooLarge,
    ConfigError,
    ContentTypeMismatch,
    DisallowedContentType,
    InvalidKey,
)
from ..metrics import Counters

__all__ = [
    "SNIFF_BYTES",
    "Blob",
    "BlobPage",
    "BlobStore",
    "BlobWriter",
    "PresignedUpload",
    "check_content_type",
    "content_disposition",
    "generate_key",
    "open_blob_store",
    "require_extras",
    "sanitize_filename",
    "sniff",
    "validate_key",
]

#: bytes read before anything is written, to sniff the type
SNIFF_BYTES = 8192
#: size of each read from the input
READ_CHUNK = 256 * 1024
#: keys below this prefix are statekit's own (pending direct-upload markers)
RESERVED_PREFIX = ".statekit/"

_BACKENDS = {
    "s3": "statekit.blobs.s3:S3BlobStore",
    "file": "statekit.blobs.local:LocalBlobStore",
    "memory": "statekit.blobs.memory:MemoryBlobStore",
}


@dataclass(frozen=True)
class Blob:
    """What a store knows about one stored object.

    ``key`` is relative to the store (its URL prefix is not part of it). Listings
    fill only ``key``, ``size`` and ``created``; :meth:`BlobStore.stat` fills what
    the backend keeps (``sha256`` may be ``None`` for objects statekit did not write).
    """

    key: str
    size: int
    content_type: str | None = None
    sha256: str | None = None
    filename: str | None = None
    created: dt.datetime | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BlobPage:
    """One page of :meth:`BlobStore.list_page`; pass ``cursor`` back for the next."""

    items: list[Blob]
    cursor: str | None


@dataclass(frozen=True)
class PresignedUpload:
    """A direct browser upload: POST ``fields`` plus a ``file`` field to ``url``,
    then call :meth:`BlobStore.confirm` with ``key``."""

    url: str
    fields: dict[str, str]
    key: str
    expires_at: dt.datetime
    max_size: int
    content_type_prefix: str


# --- names and keys ---------------------------------------------------------------------

_BIDI_AND_INVISIBLE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]")
_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')
_WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³]|conin\$|conout\$)(\..*)?$",
                               re.IGNORECASE)
_MAX_FILENAME_BYTES = 255


def sanitize_filename(name: str | None) -> str | None:
    """A display-safe version of a user-supplied filename, or ``None``.

    Keeps the last path component (``/`` and ``\\`` both separate), normalises to
    NFC, drops control, NUL, bidi-override and invisible characters, replaces the
    characters Windows forbids, strips leading dots and trailing dots/spaces,
    prefixes Windows device names (``CON``, ``LPT1``...) with ``_`` and truncates to
    255 UTF-8 bytes keeping the extension. The result is for metadata and
    ``Content-Disposition`` only; it never becomes a key or a path.
    """
    if not name:
        return None
    name = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    name = unicodedata.normalize("NFC", name)
    name = _BIDI_AND_INVISIBLE.sub("", name)
    name = "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co", "Cn"))
    name = _UNSAFE_CHARS.sub("_", name)
    name = name.strip().lstrip(".").rstrip(". ")
    if not name:
        return None
    if _WINDOWS_RESERVED.match(name):
        name = "_" + name
    if len(name.encode("utf-8")) > _MAX_FILENAME_BYTES:
        stem, dot, ext = name.rpartition(".")
        if not dot or len(ext.encode()) > 16:
            stem, ext = name, ""
        ext = f".{ext}" if ext else ""
        budget = _MAX_FILENAME_BYTES - len(ext.encode("utf-8"))
        stem = stem.encode("utf-8")[:budget].decode("utf-8", "ignore").rstrip(". ")
        name = stem + ext
    return name


def content_disposition(filename: str | None, *, inline: bool = False) -> str:
    """A ``Content-Disposition`` value (RFC 6266) with an ASCII ``filename`` fallback
    and the exact name as RFC 5987 ``filename*``."""
    kind = "inline" if inline else "attachment"
    name = sanitize_filename(filename)
    if not name:
        return kind
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    ascii_name = re.sub(r"[^A-Za-z0-9!#$&+\-.^_`|~ ()\[\]{},;=@]", "_", ascii_name).strip() or "download"
    value = f'{kind}; filename="{ascii_name}"'
    if ascii_name != name:
        value += f"; filename*=UTF-8''{quote(name, safe='')}"
    return value


_KEY_SEGMENT = re.compile(r"^[^\x00-\x1f\x7f\\]+$")
MAX_KEY_BYTES = 900


def validate_key(key: str) -> str:
    """Return *key* if it is a safe relative key, else raise :class:`InvalidKey`.

    A key is 1-900 UTF-8 bytes of ``/``-separated segments; no segment is empty,
    starts with ``.`` (so no ``..``, no hidden files, no statekit-reserved names) or
    holds a control character or backslash. Keys never name paths outside the store.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey("blob key is empty or not a string")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidKey(f"blob key is longer than {MAX_KEY_BYTES} bytes")
    for seg in key.split("/"):
        if not seg or seg.startswith(".") or not _KEY_SEGMENT.match(seg) or seg != seg.strip():
            raise InvalidKey(f"blob key {key[:80]!r} has an empty, dotted or unsafe segment")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKey("blob key is not valid Unicode") from None
    return key


def _validate_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    return validate_key(prefix) + "/" if prefix else ""


_EXT_OVERRIDES = {"image/jpeg": ".jpg", "text/plain": ".txt", "image/tiff": ".tif",
                  "audio/mpeg": ".mp3", "application/octet-stream": "",
                  "application/gzip": ".gz", "application/x-bzip2": ".bz2", "application/x-xz": ".xz"}


def _extension(content_type: str) -> str:
    ext = _EXT_OVERRIDES.get(content_type)
    if ext is None:
        ext = mimetypes.guess_extension(content_type, strict=False) or ""
    return ext if re.fullmatch(r"\.[a-z0-9]{1,10}", ext) else ""


def generate_key(content_type: str | None = None, *, prefix: str = "", now: dt.datetime | None = None) -> str:
    """``[prefix/]YYYY/MM/DD/<32 hex chars>[.ext]``: a date prefix (cheap listing and
    lifecycle rules), a 128-bit random id and an extension derived from the *type*."""
    now = now or dt.datetime.now(dt.timezone.utc)
    ext = _extension(content_type) if content_type else ""
    return f"{_validate_prefix(prefix)}{now:%Y/%m/%d}/{secrets.token_hex(16)}{ext}"


# --- content sniffing -----------------------------------------------------------------

_ALIASES = {
    "image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png",
    "application/x-zip-compressed": "application/zip", "application/x-zip": "application/zip",
    "text/xml": "application/xml", "application/x-pdf": "application/pdf",
    "image/x-icon": "image/vnd.microsoft.icon", "audio/mp3": "audio/mpeg", "audio/x-wav": "audio/wav",
    "binary/octet-stream": "application/octet-stream",
    # RFC 6713 registered application/gzip; puremagic and older clients say x-gzip
    "application/x-gzip": "application/gzip", "application/x-gunzip": "application/gzip",
    "application/gzip-compressed": "application/gzip", "application/x-gzip-compressed": "application/gzip",
    "application/x-tgz": "application/gzip", "application/x-compressed-tar": "application/gzip",
    "application/x-bzip": "application/x-bzip2", "application/x-bz2": "application/x-bzip2",
}
#: what a compressed file is, by the encoding ``mimetypes`` reads from its last suffix
#: (``report.csv.gz`` is gzip data, not CSV)
_ENCODING_TYPES = {"gzip": "application/gzip", "bzip2": "application/x-bzip2", "xz": "application/x-xz",
                   "compress": "application/x-compress", "br": "application/x-brotli"}
#: types a browser executes or renders actively; they must be declared as what they are
ACTIVE_TYPES = frozenset({"text/html", "application/xhtml+xml", "image/svg+xml", "text/xml",
                          "application/xml", "text/javascript", "application/javascript"})
_GENERIC = frozenset({"", "application/octet-stream"})

_signature_types: frozenset[str] | None = None


def _puremagic() -> Any:
    return require("puremagic", feature="blob content sniffing")


def _known_signature_types() -> frozenset[str]:
    global _signature_types
    if _signature_types is None:
        pm = _puremagic()
        found = {m.mime_type for m in pm.magic_header_array if m.mime_type}
        found |= {m.mime_type for m in pm.magic_footer_array if m.mime_type}
        for entries in pm.multi_part_dict.values():
            found |= {m.mime_type for m in entries if m.mime_type}
        _signature_types = frozenset(normalize_type(t) for t in found) - _GENERIC
    return _signature_types


def normalize_type(content_type: str | None) -> str:
    """Lower-case, parameters dropped, common aliases folded (``image/jpg``)."""
    if not content_type:
        return ""
    t = content_type.split(";", 1)[0].strip().lower()
    return _ALIASES.get(t, t)


def sniff(head: bytes) -> list[str]:
    """Content types that the first bytes match, most likely first (``puremagic``'s
    signature database); empty when nothing matches."""
    if not head:
        return []
    pm = _puremagic()
    try:
        matches = pm.magic_string(head)
    except pm.PureError:
        return []
    out: list[str] = []
    for m in sorted(matches, key=lambda m: -m.confidence):
        t = normalize_type(m.mime_type)
        if t and t not in out:
            out.append(t)
    return out


def _is_textual_type(t: str) -> bool:
    return (t.startswith("text/") or t.endswith(("+json", "+xml"))
            or t in ("application/json", "application/xml", "application/javascript"))


_BINARY_BYTES = re.compile(b"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f]")  # WHATWG "binary data bytes"


def _looks_textual(head: bytes) -> bool:
    if _BINARY_BYTES.search(head):
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start >= len(head) - 3 and e.reason.startswith("unexpected end")
    return True


def _type_from_name(name: str | None) -> str | None:
    """The type a filename suggests: a compressed file (``.gz``, ``.bz2``, ``.xz``...)
    is the compression format whatever the inner suffix (``backup.tar.gz`` is
    ``application/gzip``); else ``mimetypes``' guess, or ``None``."""
    if not name:
        return None
    guessed, encoding = mimetypes.guess_type(name, strict=False)
    if encoding:
        return _ENCODING_TYPES.get(encoding)
    return guessed


def _name_is_only_a_hint(head: bytes, guessed: str) -> bool:
    """Whether content that contradicts the type its filename suggests may still be
    stored by the ``application/octet-stream`` rule: plain text (no active content)
    whose name maps to a type that no signature identifies and a browser does not
    run (``schema.sql`` is ``application/sql``). A name that promises a format with a
    signature (``photo.png``, ``data.gz``) or an active type (``.svg``) stays binding."""
    want = normalize_type(guessed)
    return (_looks_textual(head) and want not in ACTIVE_TYPES and want not in _known_signature_types()
            and not set(sniff(head)) & ACTIVE_TYPES)


def _type_allowed(t: str, allowed: Iterable[str]) -> bool:
    for pattern in allowed:
        if not pattern.endswith("*"):
            if normalize_type(pattern) == t:
                return True
            continue
        stem = pattern[:-1].strip().lower()  # "image/", or a whole type: a direct upload's prefix
        if t.startswith(stem) or (stem in _ALIASES and t.startswith(_ALIASES[stem])):
            return True
    return False


def check_content_type(head: bytes, declared: str | None, allowed: Sequence[str] | None = None) -> str:
    """Decide the stored type of content starting with *head*, or refuse it.

    The first bytes are sniffed; a declared type (from the caller, the client's
    header, or the filename's extension) must agree with what they show:

    * ``None`` / ``application/octet-stream`` declared: the sniffed type is used
      (``text/plain`` or ``application/octet-stream`` when nothing matches);
    * a declared type among the sniffed candidates is kept;
    * a textual declared type (``text/csv``) is kept for text that is not active
      content (HTML, SVG, XML);
    * anything else -- a PNG declared ``text/html``, HTML named ``photo.png``, text
      declared as a format with a known signature -- is a :class:`ContentTypeMismatch`.

    The result must match *allowed* (``["image/*", "application/pdf"]``) when given,
    else :class:`DisallowedContentType`.
    """
    candidates = sniff(head)
    textual = _looks_textual(head)
    want = normalize_type(declared)
    if want in _GENERIC:
        fallback = "text/plain" if textual and head else "application/octet-stream"
        final = candidates[0] if candidates else fallback
    elif want in candidates:
        final = want
    elif (_is_textual_type(want) and textual and want not in ACTIVE_TYPES
          and not set(candidates) & ACTIVE_TYPES):
        final = want
    elif (not candidates and not textual and not _is_textual_type(want)
          and want not in _known_signature_types()):
        final = want  # a format puremagic cannot judge: trust the declaration
    else:
        seen = ", ".join(candidates[:3]) or ("text" if textual else "unrecognised binary data")
        raise ContentTypeMismatch(f"declared type {want!r} but the content looks like {seen}")
    if allowed is not None and not _type_allowed(final, allowed):
        raise DisallowedContentType(f"content type {final!r} is not allowed (allowed: {', '.join(allowed)})")
    return final


# --- input streams ---------------------------------------------------------------------

class _Source:
    """Reads any supported input in chunks, enforcing ``max_size`` while reading.

    At most ``max_size + 1`` bytes are read from a file object; an iterator is
    advanced at most one chunk past the limit.
    """

    def __init__(self, stream: Any, max_size: int | None) -> None:
        self.max_size = max_size
        self.total = 0
        self.filename: str | None = None
        self.content_type: str | None = None
        self.declared_size: int | None = None  # refused early when above max_size
        self.size_hint: int | None = None  # sizes the backend's parts: only sizes we can trust
        inner = stream
        # werkzeug FileStorage: .filename, .mimetype, .stream, .content_length
        if hasattr(stream, "filename") and hasattr(stream, "stream") and hasattr(stream, "mimetype"):
            self.filename = stream.filename or None
            self.content_type = stream.mimetype or None
            length = getattr(stream, "content_length", 0)  # the client's word: no size hint
            self.declared_size = int(length) if length else None
            inner = stream.stream
        # Django UploadedFile: .name, .content_type, .size, .chunks()
        elif hasattr(stream, "chunks") and hasattr(stream, "content_type") and hasattr(stream, "size"):
            self.filename = getattr(stream, "name", None) or None
            self.content_type = stream.content_type or None
            self.declared_size = self.size_hint = stream.size
        elif hasattr(stream, "fileno") and hasattr(stream, "read"):
            try:
                st = os.fstat(stream.fileno())
                if st.st_mode & 0o170000 == 0o100000:  # regular file: its remaining size
                    pos = stream.tell() if hasattr(stream, "tell") else 0
                    self.declared_size = self.size_hint = max(0, st.st_size - pos)
            except (OSError, ValueError, AttributeError):
                pass
        if isinstance(inner, (bytes, bytearray, memoryview)):
            data = bytes(inner)
            self._iter: Iterator[bytes] | None = iter((data,)) if data else iter(())
            self._read: Any = None
        elif hasattr(inner, "read"):
            self._read, self._iter = inner.read, None
        elif isinstance(inner, Iterable):
            self._read, self._iter = None, iter(inner)
        else:
            raise TypeError(f"cannot upload a {type(stream).__name__}: pass a file or an iterable of bytes")
        if self.max_size is not None and (self.declared_size or 0) > self.max_size:
            raise BlobTooLarge(f"upload of {self.declared_size} bytes exceeds max_size={self.max_size}")

    def _next(self) -> bytes:
        if self._read is not None:
            want = READ_CHUNK
            if self.max_size is not None:
                want = max(1, min(want, self.max_size + 1 - self.total))
            data = self._read(want)
            if data is None:
                raise BlobError("non-blocking input returned no data")
        else:
            assert self._iter is not None
            data = b""
            for data in self._iter:
                if data:
                    break
            else:
                data = b""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"input yielded {type(data).__name__}, not bytes")
        self.total += len(data)
        if self.max_size is not None and self.total > self.max_size:
            raise BlobTooLarge(f"upload exceeds max_size={self.max_size} bytes (aborted after {self.total})")
        return bytes(data)

    def head(self, size: int) -> bytes:
        parts: list[bytes] = []
        have = 0
        while have < size:
            data = self._next()
            if not data:
                break
            parts.append(data)
            have += len(data)
        return b"".join(parts)

    def __iter__(self) -> Iterator[bytes]:
        while data := self._next():
            yield data


# --- writers and the base class -------------------------------------------------------

class BlobWriter:
    """One in-progress write, created by a backend for :meth:`BlobStore.put`.

    ``write`` is called with the input in order, then exactly one of ``commit`` or
    ``abort``. Nothing may be visible under the key before ``commit`` returns;
    ``abort`` must undo everything and may be called after a failed ``commit``.
    """

    def write(self, data: bytes) -> None:
        raise NotImplementedError(f"{type(self).__name__}.write()")

    def commit(self, sha256: str, size: int) -> None:
        """Make the object visible, or raise :class:`BlobExists` if the key is taken."""
        raise NotImplementedError(f"{type(self).__name__}.commit()")

    def abort(self) -> None:
        raise NotImplementedError(f"{type(self).__name__}.abort()")


def encode_meta(meta: Mapping[str, str]) -> dict[str, str]:
    """Metadata values percent-encoded to printable ASCII (what S3 headers allow)."""
    out = {}
    for k, v in meta.items():
        if not re.fullmatch(r"[a-z0-9][a-z0-9\-]{0,63}", k):
            raise BlobError(f"metadata key {k!r} must be 1-64 chars of lowercase letters, digits and -")
        out[k] = quote(str(v), safe=" !#$&'()*+,-./:;=?@[]^_`{|}~")
    return out


def decode_meta(meta: Mapping[str, str]) -> dict[str, str]:
    from urllib.parse import unquote

    return {k: unquote(v) for k, v in meta.items()}


#: metadata keys statekit sets itself (prefixed to keep them apart from the caller's)
META_FILENAME = "statekit-filename"
META_SHA256 = "statekit-sha256"
META_CREATED = "statekit-created"


@dataclass
class WriteRequest:
    """Everything a backend needs to start a write."""

    key: str
    content_type: str
    filename: str | None
    disposition: str
    metadata: dict[str, str]  # already encoded, statekit keys included
    created: dt.datetime
    size_hint: int | None = None


class BlobStore:
    """A blob store chosen by URL: ``BlobStore("s3://bucket/prefix?...")``,
    ``BlobStore("file:///srv/uploads")``, ``BlobStore("memory://")``.

    Backends implement the ``_``-prefixed methods; everything else -- streaming,
    limits, sniffing, keys -- lives here, so every backend keeps the same promises.

    Concurrency: a store object is safe to share between threads; two writers never
    share a key (keys are random and creation is conditional). Failure: backend
    outages raise :class:`~statekit.errors.BackendUnavailable`; a failed write leaves
    nothing visible (an interrupted S3 multipart upload that could not be aborted is
    removed by :meth:`cleanup_incomplete`).
    """

    scheme = ""

    def __new__(cls, url: str | None = None, **kwargs: Any) -> BlobStore:
        if cls is BlobStore:
            if url is None:
                raise ConfigError("BlobStore needs a URL (s3://, file://, memory://)")
            cls = _backend_class(url)
        return object.__new__(cls)

    def __init__(self, url: str | None = None, *, max_size: int | None = None,
                 allowed_types: Sequence[str] | None = None, secret: str | bytes | None = None) -> None:
        require_extras(self.scheme)
        self.max_size = max_size
        self.allowed_types = list(allowed_types) if allowed_types is not None else None
        self._secret = (secret.encode() if isinstance(secret, str) else secret) or secrets.token_bytes(32)
        self.counters = Counters("blobs", self.describe(), names=("puts", "aborts", "bytes_written"))

    def describe(self) -> str:
        """A short, password-free name of the store (for counters and errors)."""
        return self.scheme

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
    ) -> Blob:
        """Store *stream* under a new generated key and return its :class:`Blob`.

        :param stream: a werkzeug ``FileStorage``, a Django ``UploadedFile``, a binary
            file object, ``bytes``, or an iterable of ``bytes``. Its filename and type
            are taken from it unless given.
        :param filename: the user's filename; kept sanitized in metadata, never used
            as the key.
        :param content_type: the declared type; checked against the sniffed one.
            When neither it nor the input declares a type (or only
            ``application/octet-stream``), the filename's suggests one
            (``data.csv.gz`` is ``application/gzip``), which the
            content must match; only plain text whose name maps to a type no signature
            identifies (``schema.sql``) falls back to the octet-stream rule
            (``text/plain``).
        :param max_size: refuse more than this many bytes (checked before reading
            when the size is known, else while reading: at most one chunk past it).
        :param allowed_types: allowed types, ``"image/*"`` patterns accepted.
        :param metadata: extra string metadata (keys: lowercase letters, digits, ``-``).
        :param prefix: a key prefix (``"avatars"``) placed before the date.
        :raises BlobTooLarge, ContentTypeMismatch, DisallowedContentType: the upload was
            refused; nothing is stored.
        :raises BackendUnavailable: the backend failed; nothing is stored.

        Memory stays bounded (a read chunk plus the backend's part buffers). Any
        exception, including one raised by *stream* itself, aborts the write.
        """
        limit = max_size if max_size is not None else self.max_size
        allowed = allowed_types if allowed_types is not None else self.allowed_types
        source = _Source(stream, limit)
        name = sanitize_filename(filename if filename is not None else source.filename)
        declared = content_type or source.content_type
        generic = content_type is None and normalize_type(declared) in _GENERIC
        guessed = _type_from_name(name) if generic else None
        head = source.head(SNIFF_BYTES)
        first = head[:SNIFF_BYTES]
        try:
            ctype = check_content_type(first, guessed or declared, allowed)
        except ContentTypeMismatch:
            if not guessed or not _name_is_only_a_hint(first, guessed):
                raise
            ctype = check_content_type(first, declared, allowed)  # the octet-stream rule
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        key = generate_key(ctype, prefix=prefix, now=now)
        meta = dict(metadata or {})
        for reserved in (META_FILENAME, META_SHA256, META_CREATED):
            meta.pop(reserved, None)
        if name:
            meta[META_FILENAME] = name
        meta[META_CREATED] = now.isoformat()
        req = WriteRequest(key, ctype, name, content_disposition(name), encode_meta(meta), now,
                           source.size_hint)
        digest = hashlib.sha256()
        writer = self._writer(req)
        size = 0
        try:
            for data in _chain(head, source):
                if not data:
                    continue
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
        self.counters.incr("puts")
        self.counters.incr("bytes_written", size)
        return Blob(key, size, ctype, digest.hexdigest(), name, now, {
            k: v for k, v in decode_meta(req.metadata).items() if not k.startswith("statekit-")})

    def _writer(self, req: WriteRequest) -> BlobWriter:
        raise NotImplementedError(f"{type(self).__name__}._writer()")

    # -- reading -------------------------------------------------------------------
    def open(self, key: str) -> BinaryIO:
        """A read-only, seekable binary stream of the blob. Data is fetched in ranges
        as it is read; nothing is downloaded whole. :raises BlobNotFound:"""
        return self._open(validate_key(key))

    def _open(self, key: str) -> BinaryIO:
        raise NotImplementedError(f"{type(self).__name__}._open()")

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """Up to *length* bytes from offset *start* (fewer at the end of the blob)."""
        with self.open(key) as f:
            f.seek(start)
            return f.read(length)

    def stat(self, key: str) -> Blob:
        """The blob's :class:`Blob` record. :raises BlobNotFound:"""
        return self._stat(validate_key(key))

    def _stat(self, key: str) -> Blob:
        raise NotImplementedError(f"{type(self).__name__}._stat()")

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except BlobNotFound:
            return False
        return True

    def delete(self, key: str) -> bool:
        """Delete the blob; ``True`` if it existed. Idempotent."""
        return self._delete(validate_key(key))

    def _delete(self, key: str) -> bool:
        raise NotImplementedError(f"{type(self).__name__}._delete()")

    def list_page(self, prefix: str = "", *, cursor: str | None = None, page_size: int = 1000) -> BlobPage:
        """One page of blobs whose key starts with *prefix*, in key order."""
        if prefix and not prefix.endswith("/"):
            validate_key(prefix)
        elif prefix:
            _validate_prefix(prefix)
        if not 1 <= page_size <= 1000:
            raise ConfigError("page_size must be between 1 and 1000")
        return self._list_page(prefix, cursor, page_size)

    def _list_page(self, prefix: str, cursor: str | None, page_size: int) -> BlobPage:
        raise NotImplementedError(f"{type(self).__name__}._list_page()")

    def list(self, prefix: str = "", *, page_size: int = 1000) -> Iterator[Blob]:
        """Every blob under *prefix*, fetched a page at a time."""
        cursor: str | None = None
        while True:
            page = self.list_page(prefix, cursor=cursor, page_size=page_size)
            yield from page.items
            if page.cursor is None:
                return
            cursor = page.cursor

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
        if int(expires) <= 0:
            raise ValueError(f"expires must be a positive number of seconds, not {expires!r}")
        return self._url(key, int(expires), content_disposition(download_name) if download_name else None)

    def _url(self, key: str, expires: int, disposition: str | None) -> str:
        params = self.signed_params(key, expires=expires, disposition=disposition)
        return f"{self.describe()}/{quote(key)}?{urlencode(params)}"

    def signed_params(self, key: str, *, expires: int, disposition: str | None = None) -> dict[str, str]:
        """Query parameters that grant reading *key* for *expires* seconds (non-S3
        stores): ``expires``, ``disposition`` (default: attachment with the original
        filename) and an HMAC ``signature`` with the store's ``secret``. A web app
        serves them with a view that calls :meth:`check_params` (the Flask adapter
        does)."""
        if disposition is None:
            try:
                disposition = content_disposition(self.stat(key).filename)
            except BlobNotFound:  # as a presigned S3 URL: made without a request, it reads as a 404
                disposition = content_disposition(None)
        params = {"expires": str(int(time.time()) + int(expires)), "disposition": disposition}
        params["signature"] = self._sign(key, params)
        return params

    def check_params(self, key: str, params: Mapping[str, str]) -> str:
        """Verify :meth:`signed_params` for *key*; return the ``Content-Disposition``
        to serve. :raises BlobError: tampered with or expired."""
        validate_key(key)
        signed = {k: params[k] for k in ("expires", "disposition") if k in params}
        if not hmac.compare_digest(str(params.get("signature", "")), self._sign(key, signed)):
            raise BlobError("URL signature does not match")
        try:
            expired = int(signed.get("expires", "0")) < time.time()
        except ValueError:
            expired = True
        if expired:
            raise BlobError("URL has expired")
        return signed.get("disposition", "attachment")

    def _sign(self, key: str, params: Mapping[str, str]) -> str:
        msg = json.dumps([key, sorted((k, v) for k, v in params.items() if k != "signature")]).encode()
        return base64.urlsafe_b64encode(hmac.new(self._secret, msg, "sha256").digest()).decode().rstrip("=")

    def verify_url(self, url: str) -> tuple[str, str]:
        """Check a URL made by :meth:`url` (non-S3 stores); return ``(key,
        content_disposition)``. :raises BlobError: foreign, tampered or expired."""
        from urllib.parse import unquote

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
        """
        if max_size <= 0:
            raise ConfigError("max_size must be positive")
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        key = generate_key(None, prefix=prefix, now=now)
        policy = {"max_size": max_size, "content_type_prefix": content_type_prefix,
                  "created": now.timestamp(), "expires": now.timestamp() + expires}
        self._put_marker(key, json.dumps(policy).encode())
        url, fields = self._presign_post(key, max_size, content_type_prefix, int(expires))
        return PresignedUpload(url, fields, key, now + dt.timedelta(seconds=expires), max_size,
                               content_type_prefix)

    def _presign_post(
        self, key: str, max_size: int, type_prefix: str, expires: int
    ) -> tuple[str, dict[str, str]]:
        fields = {"key": key, "Content-Type": type_prefix, "expires": str(int(time.time()) + expires),
                  "max_size": str(max_size)}
        fields["signature"] = self._sign(key, fields)
        return f"{self.describe()}/", fields

    def receive_upload(
        self, fields: Mapping[str, str], stream: Any, *, content_type: str | None = None
    ) -> None:
        """The server side of a presigned upload for stores without one of their own
        (``file://``, ``memory://``): check the signature and key, store the bytes
        as sent. Like S3, it holds the body to the signed ``max_size`` while it streams
        (:class:`BlobTooLarge`, nothing stored) and otherwise trusts the client;
        :meth:`confirm` enforces the rest of the policy."""
        key = validate_key(fields.get("key", ""))
        if not hmac.compare_digest(fields.get("signature", ""), self._sign(key, dict(fields))):
            raise BlobError("upload form signature does not match")
        if int(fields.get("expires", "0")) < time.time():
            raise BlobError("upload form has expired")
        if self._get_marker(key) is None:
            raise BlobNotFound(f"no pending upload {key!r}")
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        ctype = normalize_type(content_type or fields.get("Content-Type")) or "application/octet-stream"
        req = WriteRequest(key, ctype, None, "attachment", encode_meta({META_CREATED: now.isoformat()}), now)
        writer = self._writer(req)
        try:
            digest, size = hashlib.sha256(), 0
            for data in _Source(stream, int(fields.get("max_size", "0"))):
                digest.update(data)
                size += len(data)
                writer.write(data)
            writer.commit(digest.hexdigest(), size)
        except BaseException:
            writer.abort()
            raise

    def confirm(self, key: str, *, allowed_types: Sequence[str] | None = None) -> Blob:
        """Check a direct upload against its policy and accept it.

        Reads the size (HEAD) and the first bytes (a ranged GET) only. If the object
        is larger than the presigned ``max_size`` or its sniffed type contradicts its
        ``Content-Type`` or the allowed prefix, it is deleted and the error raised.
        Idempotent: confirming an accepted upload returns its record. On S3 the form
        uploads to a staging key that this copies to *key* and deletes: an upload
        form stays valid until it expires, and a form sent again after the check
        only reaches the staging key, never the accepted blob.
        :raises BlobNotFound: nothing was uploaded (the pending marker stays).
        """
        validate_key(key)
        raw = self._get_marker(key)
        if raw is None:
            return self._stat(key)
        target = self._upload_target(key)
        if target != key:  # the checks below run on the copy, which no replayed form can reach
            self._accept_upload(target, key)
        blob = self._stat(key)
        policy = json.loads(raw)
        try:
            if blob.size > int(policy["max_size"]):
                raise BlobTooLarge(f"direct upload of {blob.size} bytes exceeds {policy['max_size']}")
            head = self.read_range(key, 0, SNIFF_BYTES)
            check_content_type(head, blob.content_type, allowed_types)
            type_prefix = str(policy["content_type_prefix"])
            final = check_content_type(head, blob.content_type)
            if type_prefix and not _type_allowed(final, [type_prefix + "*"]):
                raise DisallowedContentType(f"direct upload is not of type {type_prefix}*")
        except (BlobTooLarge, ContentTypeMismatch, DisallowedContentType):
            self._delete(key)
            self._delete_marker(key)
            self._drop_upload_target(key)
            raise
        self._delete_marker(key)
        self._drop_upload_target(key)
        return blob

    def _upload_target(self, key: str) -> str:
        """Where the direct upload for *key* lands: *key* itself here, as
        :meth:`receive_upload` refuses a form once its upload was confirmed. A store
        whose upload forms stay usable until they expire (S3) returns a staging key
        and copies it to *key* in :meth:`_accept_upload`."""
        return key

    def _accept_upload(self, target: str, key: str) -> None:
        """Copy the direct upload at *target* to *key*. :raises BlobNotFound:"""
        raise NotImplementedError(f"{type(self).__name__}._accept_upload()")

    def _drop_upload_target(self, key: str) -> None:
        target = self._upload_target(key)
        if target != key:
            self._delete(target)

    def _put_marker(self, key: str, data: bytes) -> None:
        raise NotImplementedError(f"{type(self).__name__}._put_marker()")

    def _get_marker(self, key: str) -> bytes | None:
        raise NotImplementedError(f"{type(self).__name__}._get_marker()")

    def _delete_marker(self, key: str) -> None:
        raise NotImplementedError(f"{type(self).__name__}._delete_marker()")

    def _markers(self) -> Iterator[tuple[str, bytes]]:
        raise NotImplementedError(f"{type(self).__name__}._markers()")

    # -- housekeeping ----------------------------------------------------------------
    def cleanup_incomplete(self, older_than: float = 86400.0) -> int:
        """Remove what interrupted writes left behind more than *older_than* seconds
        ago: S3 multipart uploads are aborted, temporary files removed, and direct
        uploads never confirmed (pending past their expiry) are deleted. Returns how
        many items were removed. Safe to run from several processes at once."""
        removed = self._cleanup_partial(older_than)
        now = time.time()
        for key, raw in list(self._markers()):
            try:
                policy = json.loads(raw)
                stale = now > max(float(policy["expires"]), float(policy["created"]) + older_than)
            except (ValueError, KeyError, TypeError):
                stale = True
            if stale:
                self._delete(key)
                self._drop_upload_target(key)
                self._delete_marker(key)
                removed += 1
        return removed

    def _cleanup_partial(self, older_than: float) -> int:
        raise NotImplementedError(f"{type(self).__name__}._cleanup_partial()")

    def close(self) -> None:
        """Release connections and files (the store is unusable afterwards)."""

    def __enter__(self) -> BlobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _chain(head: bytes, rest: Iterable[bytes]) -> Iterator[bytes]:
    yield head
    yield from rest


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


def _backend_class(url: str) -> type[BlobStore]:
    parsed = parse_url(url, kinds=("s3", "file", "memory"))
    require_extras(parsed.kind)
    import importlib

    module, _, name = _BACKENDS[parsed.kind].partition(":")
    cls: type[BlobStore] = getattr(importlib.import_module(module), name)
    return cls


def open_blob_store(url: str | None = None, **kwargs: Any) -> BlobStore:
    """The store for *url*, or for ``STATEKIT_BLOBS_URL`` when *url* is ``None``."""
    if url is None:
        from ..config import Settings

        url = Settings.from_env().require("blobs_url")
    return BlobStore(url, **kwargs)

