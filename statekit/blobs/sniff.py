"""Content-type decisions for uploads: what the first bytes are (``puremagic``'s
signature database), whether that agrees with the declared type and the filename,
and whether the result is allowed.

Every store runs the same checks before anything is written, so a PNG declared
``text/html``, HTML named ``photo.png`` or an SVG under ``image/*`` is refused the
same way on S3, on disk and in memory.
"""

from __future__ import annotations

import functools
import mimetypes
import re
from collections.abc import Iterable, Sequence
from typing import Any

from ..backends import require
from ..errors import ContentTypeMismatch, DisallowedContentType

__all__ = ["ACTIVE_TYPES", "SNIFF_BYTES", "check_content_type", "normalize_type", "sniff", "type_allowed",
           "type_from_name", "upload_type"]

#: bytes read before anything is written, to sniff the type
SNIFF_BYTES = 8192

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



def _puremagic() -> Any:
    return require("puremagic", feature="blob content sniffing")


@functools.cache
def _known_signature_types() -> frozenset[str]:
    pm = _puremagic()
    found = {m.mime_type for m in pm.magic_header_array if m.mime_type}
    found |= {m.mime_type for m in pm.magic_footer_array if m.mime_type}
    for entries in pm.multi_part_dict.values():
        found |= {m.mime_type for m in entries if m.mime_type}
    return frozenset(normalize_type(t) for t in found) - _GENERIC


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


def type_from_name(name: str | None) -> str | None:
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


def type_allowed(t: str, allowed: Iterable[str]) -> bool:
    """Whether type *t* matches one of *allowed* (``"image/*"`` patterns accepted)."""
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
      declared as a format with a known signature -- is a :class:`ContentTypeMismatch`;
      so is text declared as an active type no signature in it confirms (a script:
      ``text/javascript`` never is), which the message says is refused for uploads.

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
    elif want in ACTIVE_TYPES and textual and not candidates:
        raise ContentTypeMismatch(
            f"declared type {want!r} is refused for uploads: it is active content (a browser runs it) and "
            "no signature in the content confirms it, so an upload store does not serve it; store scripts "
            "and other build assets with your static files (STORAGES['staticfiles']), not as uploads")
    else:
        seen = ", ".join(candidates[:3]) or ("text" if textual else "unrecognised binary data")
        raise ContentTypeMismatch(f"declared type {want!r} but the content looks like {seen}")
    if allowed is not None and not type_allowed(final, allowed):
        raise DisallowedContentType(f"content type {final!r} is not allowed (allowed: {', '.join(allowed)})")
    return final


def upload_type(head: bytes, declared: str | None, *, explicit: bool, filename: str | None,
                allowed: Sequence[str] | None) -> str:
    """The stored type of an upload starting with *head* (:meth:`BlobStore.put`'s rule).

    :param declared: the caller's type, else the one the input carries (a form's
        ``Content-Type``).
    :param explicit: whether the caller passed *declared*; when it did not and the
        input declares nothing specific, the *filename*'s suffix suggests the type
        (``data.csv.gz`` is ``application/gzip``), which the content must match. Only
        plain text whose name maps to a type no signature identifies (``schema.sql``)
        falls back to the octet-stream rule (``text/plain``).
    """
    generic = not explicit and normalize_type(declared) in _GENERIC
    guessed = type_from_name(filename) if generic else None
    try:
        return check_content_type(head, guessed or declared, allowed)
    except ContentTypeMismatch:
        if not guessed or not _name_is_only_a_hint(head, guessed):
            raise
        return check_content_type(head, declared, allowed)
