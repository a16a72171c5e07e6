"""Django's own file storage tests (``tests/file_storage`` of the installed Django's
sdist, see :mod:`upstream`) run against ``django_statekit.storage.BlobStorage`` on
``file://`` and on the suite's S3 endpoint.

Each run is a subprocess (this file run as a script): Django is configured there for
the ``file_storage`` test app alone, and the suites' storages are swapped for a new
``BlobStorage`` per test. Every test of the generic classes below must pass except
:data:`DESELECTED`, each a deliberate difference documented in ``docs/differences.md``
("Django file storage"); a deselected test that starts passing fails the run too, so
the list stays exact.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest

#: the generic classes run (the rest of ``tests/file_storage`` tests FileSystemStorage's
#: own options -- location, permissions, overwriting -- or Django's base Storage)
CLASSES = [
    "file_storage.tests.FileStorageTests",
    "file_storage.tests.FileFieldStorageTests",
    "file_storage.tests.ContentFileStorageTestCase",
    "file_storage.test_inmemory_storage.MemoryStorageIOTests",
    "file_storage.test_generate_filename.StorageGenerateFilenameTests",
]

_FS = "file_storage.tests.FileStorageTests."
_FF = "file_storage.tests.FileFieldStorageTests."
_MEM = "file_storage.test_inmemory_storage.MemoryStorageIOTests."

#: test id -> the row of docs/differences.md ("Django file storage") that explains it
DESELECTED: dict[str, str] = {
    # Generated keys: save() returns <upload_to>/<random>.<ext>, never the
    # name asked for, so a test that reads, lists or compares the name it saved fails
    # (the race tests patch os.makedirs/os.remove for the names they saved).
    **{_FS + t: "generated keys" for t in (
        "test_file_access_options", "test_file_save_without_name", "test_file_save_with_path",
        "test_file_save_broken_symlink", "test_listdir", "test_makedirs_race_handling",
        "test_remove_race_handling", "test_file_methods_pathlib_path",
    )},
    **{_FF + t: "generated keys" for t in (
        "test_files", "test_file_truncation", "test_empty_upload_to", "test_pathlib_upload_to",
        "test_random_upload_to", "test_custom_valid_name_callable_upload_to", "test_filefield_pickling",
        "test_stringio", "test_filefield_default", "test_filefield_db_default",
        # the copy of a saved file is read back from Django's default storage, not this one
        "test_create_file_field_from_another_file_field_in_memory_storage",
    )},
    # Content is checked against its name: "x.tar.gz" holding text is refused.
    _FF + "test_duplicate_filename": "content checked",
    **{_MEM + t: "generated keys" for t in (
        "test_file_saving", "test_file_size", "test_listdir", "test_list_relative_path", "test_exists",
        "test_delete", "test_file_node_cannot_have_children",
    )},
    # No local path: path() raises NotImplementedError (blobs live in S3 or on a shared
    # volume behind the store's rules, not at a path a caller may write).
    **{_FS + t: "no path()" for t in (
        "test_file_get_accessed_time", "test_file_get_created_time", "test_file_get_modified_time",
        "test_file_path",
    )},
    _FF + "test_file_object": "no path()",
    # Read-only blobs: open(name, "w") is refused; a new version is a new save().
    _FF + "test_filefield_write": "read-only",
    _FS + "test_file_storage_preserves_filename_case": "read-only",
    _MEM + "test_write_string": "read-only",
    _MEM + "test_convert_str_to_bytes_and_back": "read-only",
    _MEM + "test_open_dir_as_file": "read-only",
    # The upload's temporary file is read, not moved: Django deletes it when it closes.
    _MEM + "test_removing_temporary_file_after_save": "temporary file kept",
    # URLs: signed links to serve_blob (file://) or presigned GETs (S3), not base_url + name.
    **{_FS + t: "urls" for t in ("test_file_url", "test_base_url")},
    _MEM + "test_url": "urls",
    # Configured by URL, not location/base_url/permissions: FileSystemStorage's options.
    **{_FS + t: "configured by URL" for t in ("test_empty_location", "test_setting_changed",
                                              "test_delete_deletes_directories")},
    _FF + "test_extended_length_storage": "configured by URL",
}


def _upstream_tests_dir() -> Path:
    from upstream import upstream_source

    return upstream_source("django") / "tests"


def _run(url: str, tmp: Path) -> dict[str, list[str]]:
    out = tmp / f"outcomes-{uuid.uuid4().hex[:8]}.json"
    env = {**os.environ, "STATEKIT_TEST_BLOBS_URL": url}
    result = subprocess.run(  # noqa: S603 - this file, run by this interpreter
        [sys.executable, __file__, str(_upstream_tests_dir()), str(out)],
        cwd=Path(__file__).parent, env=env, capture_output=True, text=True, timeout=540, check=False,
    )
    if not out.is_file():
        raise AssertionError(
            f"the upstream run did not finish:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    outcomes: dict[str, list[str]] = json.loads(out.read_text())
    return outcomes


def _check(outcomes: dict[str, list[str]]) -> None:
    failed = {t: text for t, (status, text) in outcomes.items()
              if status in ("failed", "error") and t not in DESELECTED}
    passing_deselected = sorted(t for t, (status, _) in outcomes.items()
                                if status == "passed" and t in DESELECTED)
    unknown = sorted(set(DESELECTED) - set(outcomes))
    report = "".join(f"\n--- {t}\n{text[-1500:]}" for t, text in sorted(failed.items()))
    assert not failed, f"{len(failed)} upstream tests failed:{report}"
    assert not passing_deselected, f"deselected but passing (take them off DESELECTED): {passing_deselected}"
    assert not unknown, f"deselected tests that the installed Django does not have: {unknown}"
    assert sum(status == "passed" for status, _ in outcomes.values()) >= 14


def test_django_file_storage_suite_on_file_store(tmp_path: Path) -> None:
    _check(_run(f"file://{tmp_path}/{{unique}}?create=1", tmp_path))


@pytest.mark.s3
def test_django_file_storage_suite_on_s3(s3_url: str, tmp_path: Path) -> None:
    assert "?" in s3_url
    _check(_run(s3_url.replace("?", "/{unique}?", 1), tmp_path))


def test_every_deselected_test_has_a_documented_difference() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "differences.md").read_text()
    section = doc.split("## Django file storage", 1)[1].split("\n## ", 1)[0]
    for reason in set(DESELECTED.values()):
        assert f"({reason})" in section, f"no row tagged ({reason}) in docs/differences.md"
    for test in DESELECTED:
        assert test.rsplit(".", 1)[1] in section, f"{test} is not named in docs/differences.md"


# --- the subprocess ---------------------------------------------------------------------

def _main(tests_dir: str, out: str) -> None:  # pragma: no cover - runs in the subprocess
    import unittest
    from types import SimpleNamespace

    sys.path.insert(0, tests_dir)
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="upstream-django-storage-tests-0123456789",  # noqa: S106
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "file_storage"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        USE_TZ=True,
        ROOT_URLCONF="upstream_storage_urls",
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    )
    from django.urls import path

    from django_statekit.storage import BlobStorage, serve_blob

    sys.modules["upstream_storage_urls"] = SimpleNamespace(  # type: ignore[assignment]
        urlpatterns=[path("_statekit/blobs/<path:key>", serve_blob, name="statekit_blob")])
    django.setup()
    from django.db.models import FileField
    from django.test.utils import setup_databases, setup_test_environment

    setup_test_environment()
    setup_databases(verbosity=0, interactive=False)

    import file_storage.models as models
    import file_storage.test_generate_filename as filename_tests
    import file_storage.test_inmemory_storage as memory_tests
    import file_storage.tests as tests

    url = os.environ["STATEKIT_TEST_BLOBS_URL"]
    scratch = tempfile.mkdtemp(prefix="upstream-storage-")

    def new_storage() -> BlobStorage:
        return BlobStorage(url.replace("{unique}", uuid.uuid4().hex[:12]))

    file_fields = [f for f in models.Storage._meta.get_fields() if isinstance(f, FileField)]

    def file_storage_setup(self: Any) -> None:
        self.temp_dir = tempfile.mkdtemp(dir=scratch)
        self.storage = new_storage()

    def file_field_setup(self: Any) -> None:
        storage = new_storage()
        tests.temp_storage = storage
        for f in file_fields:
            f.storage = storage

    def memory_setup(self: Any) -> None:
        self.storage = new_storage()

    def storage_class(*args: Any, **kwargs: Any) -> BlobStorage:
        return new_storage()  # FileSystemStorage's location/base_url have no meaning here

    tests.FileStorageTests.storage_class = staticmethod(storage_class)
    filename_tests.StorageGenerateFilenameTests.storage_class = staticmethod(storage_class)
    tests.FileStorageTests.setUp = file_storage_setup
    tests.ContentFileStorageTestCase.setUp = file_storage_setup
    tests.FileFieldStorageTests.setUp = file_field_setup
    memory_tests.MemoryStorageIOTests.setUp = memory_setup

    class Recorder(unittest.TestResult):
        def __init__(self) -> None:
            super().__init__()
            self.outcomes: dict[str, list[str]] = {}

        def addSuccess(self, test: Any) -> None:  # noqa: N802 - unittest's API
            self.outcomes.setdefault(test.id(), ["passed", ""])

        def addFailure(self, test: Any, err: Any) -> None:  # noqa: N802
            self.outcomes[test.id()] = ["failed", self._exc_info_to_string(err, test)]

        def addError(self, test: Any, err: Any) -> None:  # noqa: N802
            self.outcomes[test.id()] = ["error", self._exc_info_to_string(err, test)]

        def addSkip(self, test: Any, reason: str) -> None:  # noqa: N802
            self.outcomes[test.id()] = ["skipped", reason]

        def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:  # noqa: N802
            if err is not None:
                self.outcomes[test.id()] = ["failed", self._exc_info_to_string(err, test)]

    suite = unittest.TestSuite()
    for name in CLASSES:
        suite.addTests(unittest.defaultTestLoader.loadTestsFromName(name))
    recorder = Recorder()
    try:
        suite.run(recorder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    Path(out).write_text(json.dumps(recorder.outcomes, indent=1))


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
