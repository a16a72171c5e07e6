"""Hostile input: path tricks, NUL bytes, huge names, device names, RTL overrides,
lying content types. Each is refused with a typed error or stored under a safe
generated key; nothing is ever written outside the store's root."""

from __future__ import annotations

import datetime as dt
import os
import re
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_blobs_contract import HTML, png_bytes

from statekit.blobs import (
    BlobStore,
    content_disposition,
    generate_key,
    sanitize_filename,
    validate_key,
)
from statekit.errors import ContentTypeMismatch, InvalidKey

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
