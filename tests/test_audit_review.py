"""``statekit audit``: per-process state it missed, and legal code it must leave alone
(review). Each case failed before its fix."""

from __future__ import annotations

from test_audit import codes  # tests/ is on sys.path


def test_lru_cache_on_an_orm_query() -> None:
    """Flask-SQLAlchemy's ``Model.query`` and ``db.session`` read the database as
    surely as ``execute`` does."""
    src = """
    import functools
    @functools.lru_cache(maxsize=None)
    def user(uid):
        return db.session.get(User, uid)
    @functools.cache
    def active():
        return Setting.query.filter_by(active=True).all()
    @functools.cache
    def settings():
        return Settings()
    """
    assert codes(src) == [(3, "SK303"), (6, "SK303")]


def test_cachetools_caches() -> None:
    """cachetools: a module-level TTLCache/LRUCache is one process's cache; ``@cached``
    or ``@ttl_cache`` on a database query keeps a per-worker copy. Flask-Caching's
    ``@cache.cached`` (any backend, maybe Redis) is not cachetools'."""
    src = """
    import cachetools.func
    from cachetools import TTLCache, LRUCache, cached
    user_cache = TTLCache(maxsize=100, ttl=60)
    @cached(user_cache)
    def user(uid):
        return db.execute("select").fetchone()
    @cached(cache=LRUCache(maxsize=32))
    def team(tid):
        return db.execute("select").fetchone()
    @cachetools.func.ttl_cache(ttl=30)
    def count():
        return User.objects.count()
    @cache.cached(timeout=60)
    def report():
        return db.execute("select").fetchall()
    """
    assert codes(src) == [(4, "SK304"), (5, "SK303"), (8, "SK303"), (11, "SK303")]


def test_flask_caching_type_in_a_config_dict() -> None:
    src = """
    from flask_caching import Cache
    cache = Cache(config={"CACHE_TYPE": "SimpleCache"})
    files = Cache(app, config={"CACHE_TYPE": "FileSystemCache", "CACHE_DIR": "/tmp/c"})
    shared = Cache(config={"CACHE_TYPE": "RedisCache"})
    """
    assert codes(src) == [(3, "SK304"), (4, "SK304")]


def test_class_attributes_used_as_registries() -> None:
    """A class attribute is a module-level container with a dotted name: written from
    a handler, directly or through a classmethod it calls."""
    src = """
    class Registry:
        users = {}
        LIMIT = 10
    class Tracker:
        active = []
        @classmethod
        def add(cls, name):
            cls.active.append(name)
        def count(self):
            return len(self.active)
    @app.post("/register")
    def register():
        Registry.users[request.form["name"]] = 1
        Tracker.add(request.form["name"])
        return str(Registry.LIMIT + Tracker().count())
    """
    assert codes(src) == [(9, "SK301"), (14, "SK301")]


def test_an_uploaded_file_saved_under_any_name() -> None:
    """``request.files[...]`` is an upload whatever the variable holding the path is
    called; a path opened for writing through ``Path.open`` or aiofiles is local."""
    src = """
    from pathlib import Path
    import aiofiles
    @app.post("/a")
    def a():
        f = request.files["photo"]
        name = "static/" + f.filename
        f.save(name)
        request.files.get("other").save(name)
    @app.post("/b")
    def b():
        with (Path("uploads") / "x").open("wb") as out:
            out.write(b"")
        with Path("notes.txt").open() as notes:
            return notes.read()
    @app.post("/c")
    async def c(file):
        async with aiofiles.open(f"uploads/{file.filename}", "wb") as out:
            await out.write(await file.read())
    """
    assert codes(src) == [(8, "SK101"), (9, "SK101"), (12, "SK102"), (18, "SK102")]


def test_sqlite_in_one_process_memory_or_a_per_worker_file() -> None:
    """An in-memory SQLite database (or one named after the worker's pid, or in a fresh
    temporary directory) is one process's database."""
    src = """
    import os, sqlite3, tempfile
    conn = sqlite3.connect(":memory:")
    SQLALCHEMY_DATABASE_URI = "sqlite://"
    engine = create_engine("sqlite:///:memory:")
    mine = sqlite3.connect(f"/tmp/app-{os.getpid()}.db")
    tmp = sqlite3.connect(os.path.join(tempfile.mkdtemp(), "x.db"))
    shared = sqlite3.connect(os.environ["DB_PATH"])
    DATABASE_URL = "postgresql://db/app"
    """
    assert codes(src) == [(3, "SK305"), (4, "SK305"), (5, "SK305"), (6, "SK305"), (7, "SK305")]


def test_a_thread_under_the_main_guard_is_not_started_by_a_worker() -> None:
    """``if __name__ == "__main__":`` does not run when a server imports the module."""
    src = """
    import threading
    def loop():
        return None
    def start():
        threading.Thread(target=loop).start()
    if __name__ == "__main__":
        threading.Thread(target=loop).start()
        start()
        app.run()
    """
    assert codes(src) == []


def test_module_level_objects_whose_attributes_a_handler_writes() -> None:
    """``stats = SimpleNamespace(hits=0)`` or an instance of a module class is a
    container with attributes: ``stats.hits += 1`` in a handler is per worker."""
    src = """
    from types import SimpleNamespace
    class Stats:
        hits = 0
    stats = Stats()
    totals = SimpleNamespace(bytes=0)
    app = Flask(__name__)
    @app.get("/")
    def index():
        stats.hits += 1
        totals.bytes = totals.bytes + 10
        app.config["SEEN"] = True
        return str(stats.hits)
    """
    assert codes(src) == [(10, "SK301"), (11, "SK301")]


def test_a_thread_started_by_a_startup_hook_runs_per_worker() -> None:
    src = """
    import threading
    @app.on_event("startup")
    async def start_refresh():
        threading.Thread(target=loop, daemon=True).start()
    @app.before_first_request
    def warm():
        threading.Timer(60, refresh).start()
    @contextlib.asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=loop, daemon=True).start()
        yield
    """
    assert codes(src) == [(5, "SK402"), (8, "SK402"), (11, "SK402")]


def test_shelve_and_dbm_in_a_handler_are_local_files() -> None:
    """``shelve.open``/``dbm.open`` create and write a file by default (mode "c")."""
    src = """
    import dbm, shelve
    @app.post("/a")
    def a():
        with shelve.open("visits") as db:
            db[request.remote_addr] = 1
        with dbm.open("cache.db", "c") as d:
            d["k"] = "v"
        with dbm.open("ro.db", "r") as r:
            return r["k"]
    """
    assert codes(src) == [(5, "SK102"), (7, "SK102")]
