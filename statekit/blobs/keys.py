"""Blob keys and names: the generated keys blobs are stored under, the checks a key
must pass before any backend sees it, and the sanitized filename kept for display.

A user's filename never becomes a key or a path: keys are generated
(:func:`generate_key`), and :func:`validate_key` refuses anything that could name a
place outside the store (``..``, absolute paths, control characters, statekit's own
``.statekit/`` names).
"""

from __future__ import annotations

import datetime as dt
import mimetypes
import re
import secrets
import unicodedata
from urllib.parse import quote

from ..errors import InvalidKey

__all__ = ["MAX_KEY_BYTES", "RESERVED_PREFIX", "content_disposition", "generate_key", "sanitize_filename",
           "validate_key", "validate_prefix"]

#: keys below this prefix are statekit's own (pending direct-upload markers)
RESERVED_PREFIX = ".statekit/"

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
    stripped = None
    while stripped != name:  # ". 0" -> " 0" -> "0": until no edge is left to strip
        stripped, name = name, name.strip().lstrip(".").rstrip(". ")
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


#: a prefix segment becomes a directory name on ``file://`` stores
_MAX_SEGMENT_BYTES = 255


def validate_prefix(prefix: str) -> str:
    """*prefix* without surrounding slashes, validated as a key, plus ``/`` (or ``""``).
    Its segments are at most 255 UTF-8 bytes (a file name), so a key made with it can
    be stored on every backend."""
    prefix = prefix.strip("/")
    if not prefix:
        return ""
    validate_key(prefix)
    if any(len(seg.encode("utf-8")) > _MAX_SEGMENT_BYTES for seg in prefix.split("/")):
        raise InvalidKey(f"blob key prefix {prefix[:80]!r} has a segment longer than "
                         f"{_MAX_SEGMENT_BYTES} bytes")
    return prefix + "/"


_EXT_OVERRIDES = {"image/jpeg": ".jpg", "text/plain": ".txt", "image/tiff": ".tif",
                  "audio/mpeg": ".mp3", "application/octet-stream": "",
                  "application/gzip": ".gz", "application/x-bzip2": ".bz2", "application/x-xz": ".xz"}


def _extension(content_type: str) -> str:
    ext = _EXT_OVERRIDES.get(content_type)
    if ext is None:
        ext = mimetypes.guess_extension(content_type, strict=False) or ""
    return ext if re.fullmatch(r"\.[a-z0-9]{1,10}", ext) else ""


def generate_key(content_type: str | None = None, *, prefix: str = "", now: dt.datetime | None = None,
                 date_path: bool = True) -> str:
    """``[prefix/]YYYY/MM/DD/<32 hex chars>[.ext]``: a date prefix (cheap listing and
    lifecycle rules), a 128-bit random id and an extension derived from the *type*.
    Without *date_path*, ``[prefix/]<32 hex chars>[.ext]``: the caller's *prefix* is
    the whole directory (Django's ``upload_to``, whose ``%Y/%m/%d`` it formats itself).

    :raises InvalidKey: *prefix* is not a valid key prefix, or makes the key longer
        than :data:`MAX_KEY_BYTES`."""
    now = now or dt.datetime.now(dt.timezone.utc)
    ext = _extension(content_type) if content_type else ""
    # validated whole: a long prefix must not make a key no method could read back
    day = f"{now:%Y/%m/%d}/" if date_path else ""
    return validate_key(f"{validate_prefix(prefix)}{day}{secrets.token_hex(16)}{ext}")
