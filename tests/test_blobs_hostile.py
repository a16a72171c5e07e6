"""Hostile input: path tricks, NUL bytes, huge names, device names, RTL overrides,
lying content types. Each is refused with a typed error or stored under a safe
generated key; nothing is ever written outside the store's root."""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statekit.blobs import (
    BlobStore,
    content_disposition,
    generate_key,
    sanitize_filename,
    validate_key,
)
from statekit.errors import ContentTypeMismatch, InvalidKey
from statekit.testing.contracts.blobs import HTML, png_bytes

HOSTILE_NAMES = [
    "../../etc/passwd",
    "..\\..\\windows\\system32\\config\\sam",
    "/etc/passwd",
    "C:\\Windows\\win.ini",
    "evil\x00.png",
    "a" * 1000 + ".txt",
    "\u00e9" * 600 + ".pdf",
    "CON",
    "con.txt",
    "LPT1.csv",
    "aux",
    "invoice\u202egnp.exe",
    "\u202e\u2066photo.png",
    "...",
    "  .hidden  ",
    "<script>.txt",
    'qu"ote;name.txt',
    "line\r\nbreak.txt",
]

KEY_RE = re.compile(r"^\d{4}/\d{2}/\d{2}/[0-9a-f]{32}(\.[a-z0-9]{1,10})?$")


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
def test_hostile_filenames_get_safe_keys_inside_the_root(tmp_path: Path, name: str) -> None:
    root = tmp_path / "root"
    store = BlobStore(f"file://{root}?create=1")
    outside_before = _tree(tmp_path) - {p for p in _tree(tmp_path) if p.startswith("root")}
    blob = store.put(b"plain text body\n", filename=name, content_type="text/plain")
    assert KEY_RE.match(blob.key)
    assert (root / blob.key).read_bytes() == b"plain text body\n"
    outside_after = {p for p in _tree(tmp_path) if not p.startswith("root")}
    assert outside_after == outside_before
    safe = blob.filename
    if safe is not None:
        assert "/" not in safe and "\\" not in safe and "\x00" not in safe
        assert not any(unicodedata.category(c) in ("Cc", "Cf") for c in safe)
        assert len(safe.encode("utf-8")) <= 255
        assert not re.match(r"(?i)^(con|prn|aux|nul|com\d|lpt\d)(\.|$)", safe)
        assert not safe.startswith(".")
        disp = content_disposition(safe)
        assert "\r" not in disp and "\n" not in disp and disp.count('"') == 2
    assert store.stat(blob.key).filename == safe


def test_sanitized_examples() -> None:
    assert sanitize_filename("../../etc/passwd") == "passwd"
    assert sanitize_filename("C:\\Windows\\win.ini") == "win.ini"
    assert sanitize_filename("evil\x00.png") == "evil.png"
    assert sanitize_filename("CON") == "_CON"
    assert sanitize_filename("invoice\u202egnp.exe") == "invoicegnp.exe"
    long = sanitize_filename("a" * 1000 + ".txt")
    assert long is not None and long.endswith(".txt") and len(long) == 255
    wide = sanitize_filename("\u00e9" * 600 + ".pdf")
    assert wide is not None and wide.endswith(".pdf") and len(wide.encode()) <= 255
    assert sanitize_filename("...") is None and sanitize_filename("") is None


@pytest.mark.parametrize("key", [
    "../../etc/passwd", "/etc/passwd", "a/../../b", "a\x00b", "x" * 1000, "C:\\x", "a/.hidden",
    "trailing/", " lead", "\u202e",  # invisible-only segment is fine only if printable: refused below
])
def test_hostile_keys_refused(tmp_path: Path, key: str) -> None:
    store = BlobStore(f"file://{tmp_path / 'root'}?create=1")
    if key == "\u202e":  # a format character alone is a valid, harmless S3 key; still inside the root
        assert validate_key(key) == key
        assert not store.exists(key)
        return
    with pytest.raises(InvalidKey):
        store.stat(key)
    with pytest.raises(InvalidKey):
        store.delete(key)
    with pytest.raises(InvalidKey):
        store.url(key)


def test_symlink_in_root_cannot_redirect_writes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    now = dt.datetime.now(dt.timezone.utc)
    (root / f"{now:%Y}").symlink_to(outside, target_is_directory=True)
    store = BlobStore(f"file://{root}")
    with pytest.raises(InvalidKey):
        store.put(b"data", content_type="text/plain")
    assert list(outside.rglob("*")) == []
    os.symlink("/etc/hostname", root / "link")
    with pytest.raises(InvalidKey):
        store.open("link")


@pytest.mark.parametrize("backend", ["memory", "file"])
def test_lying_content_types(tmp_path: Path, backend: str) -> None:
    store = BlobStore("memory://" if backend == "memory" else f"file://{tmp_path}")
    with pytest.raises(ContentTypeMismatch):
        store.put(png_bytes(), content_type="text/html", filename="x.html")
    with pytest.raises(ContentTypeMismatch):
        store.put(HTML, filename="photo.png")
    with pytest.raises(ContentTypeMismatch):
        store.put(HTML, filename="photo.png", content_type="image/png")
    with pytest.raises(ContentTypeMismatch):  # active content passed off as plain text
        store.put(HTML, content_type="text/plain")
    with pytest.raises(ContentTypeMismatch):
        store.put(b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>", filename="a.jpg")
    assert list(store.list()) == []


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_sanitize_filename_property(name: str) -> None:
    safe = sanitize_filename(name)
    if safe is None:
        return
    assert safe and "/" not in safe and "\\" not in safe
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in safe)
    assert len(safe.encode("utf-8")) <= 255 and not safe.startswith(".")
    assert sanitize_filename(safe) == safe  # idempotent
    disp = content_disposition(safe)
    disp.encode("ascii")  # header-safe


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["image/png", "text/html", "application/x-evil", "text/plain", "application/pdf"]),
       st.sampled_from(["", "avatars", "a/b"]))
def test_generated_keys_always_valid(ctype: str, prefix: str) -> None:
    key = generate_key(ctype, prefix=prefix)
    assert validate_key(key) == key and ".." not in key


SVG = b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'><script>alert(2)</script></svg>"
#: names whose guess is a compressed type or an application/* type a signature cannot check
DISGUISES = ["backup.tar.gz", "export.csv.gz", "data.gz", "logs.tgz", "dump.sql.bz2", "dump.xz",
             "schema.sql", "install.csh", "paper.latex", "tool.tcl"]


def _upload(body: bytes, name: str | None, declared: str | None) -> Any:
    """A form upload as Flask hands it over: the browser's filename and type."""
    from werkzeug.datastructures import FileStorage

    return FileStorage(io.BytesIO(body), filename=name, content_type=declared)


@pytest.mark.parametrize("body", [HTML, SVG], ids=["html", "svg"])
@pytest.mark.parametrize("declared", [None, "application/octet-stream", "application/gzip",
                                      "application/x-gzip", "application/x-bzip2", "application/x-xz"])
def test_active_content_disguised_as_compressed_or_application_text_is_refused(
    body: bytes, declared: str | None,
) -> None:
    """The relaxed rules (compressed names and types, text named ``.sql`` sent as
    octet-stream) never let HTML or SVG through under those names or types."""
    store = BlobStore("memory://disguises")
    for name in DISGUISES:
        try:
            blob = store.put(_upload(body, name, declared))
        except ContentTypeMismatch:
            continue
        raise AssertionError(f"{name!r} declared {declared!r} was stored as {blob.content_type}")
    assert list(store.list()) == []


_ACTIVE_PAYLOADS = [HTML, SVG, b"<html><body onload=alert(1)>", b"<!doctype html><p>hi",
                    b"<?xml version='1.0'?><x:script xmlns:x='http://www.w3.org/1999/xhtml'/>"]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.sampled_from(_ACTIVE_PAYLOADS), st.text(max_size=300).map(str.encode),
                 st.binary(max_size=300),
                 st.tuples(st.text(max_size=40), st.sampled_from(_ACTIVE_PAYLOADS)).map(
                     lambda t: t[0].encode() + t[1])),
       st.sampled_from([*DISGUISES, "photo.png", "a.svg", "page.html", "notes.txt", "x.js", "archive.zip"]),
       st.sampled_from([None, "application/octet-stream"]))
def test_a_filename_never_makes_content_more_active(body: bytes, name: str, declared: str | None) -> None:
    """Property: with a generic declared type, the stored type is what the name
    suggests when the content matches it, else what the content alone gives (the
    octet-stream rule); an active type is stored only when the bytes sniff as it."""
    from statekit.blobs.sniff import ACTIVE_TYPES, normalize_type, sniff, type_from_name

    store = BlobStore("memory://property")
    try:
        blob = store.put(_upload(body, name, declared))
    except ContentTypeMismatch:
        return
    without_name = store.put(_upload(body, None, declared))
    assert blob.content_type in {without_name.content_type, normalize_type(type_from_name(name))}
    if blob.content_type in ACTIVE_TYPES:
        assert blob.content_type in sniff(body[:8192])


@pytest.mark.parametrize("signature", ["\u00e9t\u00e9", "\udcff", "\ud800", "\x00", ""])
def test_a_hostile_signature_is_a_blob_error(signature: str) -> None:
    """A signature that is not ASCII (any query string can carry one) is refused
    like a wrong one, with a BlobError: never a TypeError from the comparison."""
    from urllib.parse import quote

    from statekit.errors import BlobError

    store = BlobStore("memory://hostile-signature", secret="s" * 32)
    key = store.put(b"hello", filename="a.txt").key
    url = re.sub("signature=[^&]*", "signature=" + quote(signature, errors="surrogatepass"), store.url(key))
    with pytest.raises(BlobError, match="signature"):
        store.verify_url(url)
    with pytest.raises(BlobError, match="signature"):
        store.check_params(key, {"expires": "9999999999", "disposition": "attachment",
                                 "signature": signature})
    up = store.presign_upload(max_size=100, expires=60)
    with pytest.raises(BlobError, match="signature"):
        store.receive_upload({**up.fields, "signature": signature}, io.BytesIO(b"abc"))
    assert not store.exists(up.key)
    store.receive_upload(up.fields, io.BytesIO(b"abc"))  # the real form still works
    assert store.confirm(up.key).size == 3


def test_signed_params_refuse_a_reserved_key() -> None:
    store = BlobStore("memory://hostile-signature", secret="s" * 32)
    with pytest.raises(InvalidKey):
        store.signed_params(".statekit/pending/2026/01/01/x", expires=60, disposition="attachment")


@pytest.mark.parametrize(("name", "safe"),
                         [(". 0", "0"), (". . .x.png", "x.png"), (" .. a ", "a"), (". . ", None)])
def test_sanitized_names_never_keep_an_edge_dot_or_space(name: str, safe: str | None) -> None:
    """Stripping a leading dot can uncover a space, and a space a dot (found by the
    property test: ". 0" gave " 0", which sanitized again to "0")."""
    assert sanitize_filename(name) == safe
    assert sanitize_filename(safe) == safe


@pytest.mark.parametrize("backend", ["file", "memory"])
@pytest.mark.parametrize("prefix", ["a" * 300, "b/" * 430])
def test_a_prefix_that_makes_a_bad_key_is_refused_before_anything_is_stored(
    tmp_path: Path, backend: str, prefix: str
) -> None:
    """A prefix segment longer than a file name may be (255 bytes), or a prefix that
    makes the generated key longer than 900 bytes, is an InvalidKey before any write:
    not an outage (BackendUnavailable from the filesystem), and never a stored blob
    that no public method can reach afterwards."""
    url = f"file://{tmp_path / 'root'}?create=1" if backend == "file" else f"memory://long-prefix-{tmp_path.name}"
    store = BlobStore(url)
    with pytest.raises(InvalidKey):
        store.put(b"hello", prefix=prefix, content_type="text/plain")
    with pytest.raises(InvalidKey):
        store.presign_upload(max_size=100, prefix=prefix)
    assert list(store.list()) == [] and list(store._internal(".statekit/")) == []
    key = store.put(b"hello", prefix="b/" * 100, content_type="text/plain").key  # long, but fits
    assert store.stat(key).size == 5
