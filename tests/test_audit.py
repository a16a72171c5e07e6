"""``statekit audit``: the static check for per-process state."""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path

import pytest

from statekit import audit, cli

ROOT = Path(__file__).resolve().parent.parent
BEFORE = "examples/flask_app/before"
MIGRATION = ROOT / "docs" / "migration.md"


@pytest.fixture
def in_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def codes(source: str, path: str = "app.py") -> list[tuple[int, str]]:
    return [(f.line, f.code) for f in audit.audit_source(textwrap.dedent(source), path)]


def test_before_app_findings_are_pinned(in_root: None, capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["audit", BEFORE])
    out = capsys.readouterr().out.splitlines()
    assert status == 1
    assert [line.split(" ", 2)[:2] for line in out] == [
        [f"{BEFORE}/app.py:49:", "SK201"],  # Flask-Session on cachelib SimpleCache
        [f"{BEFORE}/app.py:73:", "SK401"],  # users-count thread started at import
        [f"{BEFORE}/app.py:76:", "SK303"],  # lru_cache on find_user() querying the database
        [f"{BEFORE}/app.py:90:", "SK301"],  # report_cache dict written from a handler
        [f"{BEFORE}/app.py:97:", "SK101"],  # FileStorage.save() into uploads/
        [f"{BEFORE}/app.py:139:", "SK302"],  # global requests_served in index()
        [f"{BEFORE}/nginx.conf:6:", "SK501"],  # ip_hash: sticky sessions
    ]
    # every habit of the issue is covered, each line links to its guide section
    assert {line.split(" ")[1][:3] for line in out} == {"SK1", "SK2", "SK3", "SK4", "SK5"}
    for line in out:
        assert line.endswith(")") and "(docs/migration.md#" in line


def test_before_app_json(in_root: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["audit", "--format", "json", BEFORE]) == 1
    data = json.loads(capsys.readouterr().out)
    assert [(d["path"], d["line"], d["code"]) for d in data][:2] == [
        (f"{BEFORE}/app.py", 49, "SK201"), (f"{BEFORE}/app.py", 73, "SK401"),
    ]
    assert all(d["doc"].startswith("docs/migration.md#") and d["message"] for d in data)


def test_migrated_app_is_clean(in_root: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["audit", "examples/flask_app"]) == 0
    assert capsys.readouterr().out == ""


def test_guide_sections_exist() -> None:
    if not MIGRATION.exists():
        pytest.skip("docs/migration.md not written yet")
    text = MIGRATION.read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).strip().replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", text, re.M)}
    for section, _ in audit.RULES.values():
        assert section in anchors, section


def test_select_and_ignore(in_root: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["audit", "--select", "SK3", BEFORE]) == 1
    found = {line.split(" ")[1] for line in capsys.readouterr().out.splitlines()}
    assert found == {"SK301", "SK302", "SK303"}
    assert cli.main(["audit", "--ignore", "SK1,SK2,SK3,SK4,SK5", BEFORE]) == 0


def test_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    assert audit.main([str(tmp_path / "nope")]) == 2


def test_never_imports_the_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "app.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nimport nonexistent_module\n")
    assert audit.main([str(tmp_path)]) == 0
    assert not marker.exists()


def test_flask_upload_open_and_global() -> None:
    src = """
    import os
    from flask import Flask, request
    app = Flask(__name__)
    seen = []

    @app.post("/upload")
    def upload():
        global hits
        hits += 1
        f = request.files["file"]
        f.save(os.path.join("uploads", f.filename))
        with open(f"/srv/data/{f.filename}", "wb") as out:
            out.write(b"")
        seen.append(f.filename)
        return "ok"

    @app.get("/x")
    def x():
        local = []
        local.append(1)
        return str(seen)
    """
    assert codes(src) == [(9, "SK302"), (12, "SK101"), (13, "SK102"), (15, "SK301")]


def test_django_model_save_is_not_an_upload() -> None:
    src = """
    def view(request):
        obj = Thing(name="x")
        obj.save()
        form.save(commit=False)
        return obj
    """
    assert codes(src) == []


def test_django_view_writing_a_module_dict() -> None:
    src = """
    CACHE = {}
    class ReportView(View):
        def get(self, request):
            CACHE["report"] = compute()
            return CACHE["report"]
    def other(request):
        CACHE.setdefault("k", 1)
    """
    assert codes(src) == [(5, "SK301"), (8, "SK301")]


def test_only_view_classes_have_handler_methods() -> None:
    src = """
    REGISTRY = {}
    class Store:
        def put(self, key, value):
            REGISTRY[key] = value
    class PhotoView(MethodView):
        def post(self):
            REGISTRY["x"] = 1
    """
    assert codes(src) == [(8, "SK301")]


def test_lazy_singleton_is_not_global_state() -> None:
    src = """
    _client = None
    hits = 0
    def view(request):
        global _client, hits
        if _client is None:
            _client = make_client()
        return _client
    def other(request):
        global hits
        hits += 1
    """
    assert codes(src) == [(10, "SK302")]


def test_tests_are_skipped_unless_asked(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text('SESSION_TYPE = "filesystem"\n')
    (tmp_path / "test_y.py").write_text('SESSION_TYPE = "filesystem"\n')
    (tmp_path / "conftest.py").write_text('SESSION_TYPE = "filesystem"\n')
    assert audit.audit_paths([str(tmp_path)]) == []
    assert len(audit.audit_paths([str(tmp_path)], include_tests=True)) == 3
    assert audit.main(["--include-tests", str(tmp_path)]) == 1
    # a test file named on the command line is checked
    assert len(audit.audit_paths([str(tmp_path / "test_y.py")])) == 1


def test_cached_query_and_plain_cache() -> None:
    src = """
    from functools import lru_cache, cache
    @lru_cache(maxsize=10)
    def user(name):
        return db.execute("select 1").fetchone()
    @cache
    def count():
        return User.objects.count()
    @cache
    def pure(x):
        return x * 2
    """
    assert codes(src) == [(3, "SK303"), (6, "SK303")]


def test_timers() -> None:
    src = """
    import threading
    from apscheduler.schedulers.background import BackgroundScheduler
    scheduler = BackgroundScheduler()
    scheduler.start()
    threading.Timer(10, refresh).start()

    def start_refresh():
        threading.Thread(target=loop, daemon=True).start()
    start_refresh()

    def post_fork(server, worker):
        t = threading.Thread(target=loop)
        t.start()

    def later():
        threading.Thread(target=loop).start()
    """
    assert codes(src) == [(5, "SK401"), (6, "SK401"), (9, "SK401"), (14, "SK402")]


def test_flask_session_settings() -> None:
    assert codes('SESSION_TYPE = "filesystem"\n') == [(1, "SK201")]
    assert codes('app.config.update(SESSION_TYPE="cachelib")\n') == [(1, "SK201")]
    assert codes('app.config["SESSION_TYPE"] = "redis"\n') == []
    src = """
    app.config["SESSION_TYPE"] = "cachelib"
    app.config["SESSION_CACHELIB"] = FileSystemCache("/tmp/s")
    """
    assert codes(src) == [(3, "SK201")]


def test_django_settings() -> None:
    assert codes('SESSION_ENGINE = "django.contrib.sessions.backends.file"\n') == [(1, "SK202")]
    # a cache engine with no CACHES means LocMemCache
    assert codes('SESSION_ENGINE = "django.contrib.sessions.backends.cache"\n') == [(1, "SK202")]
    src = """
    SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    }
    STORAGES = {"default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
                "staticfiles": {"BACKEND": "x"}}
    """
    assert codes(src) == [(2, "SK202"), (4, "SK304"), (6, "SK103")]
    src = """
    SESSION_ENGINE = "django_statekit.sessions"
    CACHES = {"default": {"BACKEND": "django_statekit.cache.StatekitCache"}}
    STORAGES = {"default": {"BACKEND": "django_statekit.storage.BlobStorage"}}
    MEDIA_ROOT = "media"
    INSTALLED_APPS = []
    """
    assert codes(src) == []
    assert codes('INSTALLED_APPS = []\nMEDIA_ROOT = "/srv/media"\n') == [(2, "SK103")]


def test_process_local_caches_and_storages() -> None:
    src = """
    from cachelib import SimpleCache
    cache = SimpleCache()
    app.config["CACHE_TYPE"] = "SimpleCache"
    app.config.from_mapping(CACHE_TYPE="RedisCache")
    avatar_storage = FileSystemStorage(location="/srv/avatars")
    def f():
        local = SimpleCache()
    """
    assert codes(src) == [(3, "SK304"), (4, "SK304"), (6, "SK103")]


def test_ignore_comment_and_ignore_file(tmp_path: Path) -> None:
    src = """
    CACHE = {}
    @app.get("/")
    def index():
        CACHE["a"] = 1  # statekit: ignore[SK301]
        CACHE["b"] = 1  # statekit: ignore[SK101]
    """
    assert codes(src) == [(6, "SK301")]
    (tmp_path / "legacy").mkdir()
    (tmp_path / "legacy" / "app.py").write_text('SESSION_TYPE = "filesystem"\n')
    (tmp_path / "nginx.conf").write_text("upstream a {\n  # ip_hash;\n  hash $cookie_sid;\n}\n")
    found = audit.audit_paths([str(tmp_path)])
    assert [(os.path.basename(f.path), f.line, f.code) for f in found] == [
        ("app.py", 1, "SK201"), ("nginx.conf", 3, "SK501"),
    ]
    (tmp_path / ".statekitignore").write_text("# old code\nlegacy/\n")
    assert [f.code for f in audit.audit_paths([str(tmp_path)])] == ["SK501"]
    # a path named explicitly is always checked
    assert [f.code for f in audit.audit_paths([str(tmp_path / "legacy")])] == ["SK201"]


def test_syntax_error_is_reported_not_fatal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.py").write_text("def (:\n")
    (tmp_path / "good.py").write_text('SESSION_TYPE = "filesystem"\n')
    assert audit.main([str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "bad.py:1: cannot parse" in captured.err
    assert "good.py:1: SK201" in captured.out
