"""``statekit audit``: what the fourteenth session's review found it missed -- endpoints
recognised by their parameter's name only, executor tasks started at import or at
startup, memoized HTTP fetches -- and the near misses it must leave alone. Each
positive case failed before its fix."""

from __future__ import annotations

from test_audit import codes  # tests/ is on sys.path


def test_starlette_endpoints_registered_by_route_whatever_their_parameter_is_called() -> None:
    """A Starlette endpoint is what ``Route``/``WebSocketRoute``/``add_route`` name,
    ``req`` or ``socket`` as much as ``request``, also one defined in an app factory."""
    src = """
    from starlette.applications import Starlette
    from starlette.routing import Mount, Route, WebSocketRoute
    VISITS = {}
    async def home(req):
        VISITS[req.client.host] = 1
        return PlainTextResponse("hi")
    async def feed(socket):
        await socket.accept()
        VISITS["ws"] = 1
    async def upload(r):
        with open("uploads/x", "wb") as out:
            out.write(await r.body())
    def create_app():
        async def count(_):
            global hits
            hits += 1
        app = Starlette(routes=[
            Route("/", home),
            Mount("/api", routes=[Route("/up", endpoint=upload, methods=["POST"])]),
            WebSocketRoute("/ws", feed),
        ])
        app.add_route("/count", count)
        return app
    """
    assert codes(src) == [(6, "SK301"), (10, "SK301"), (12, "SK102"), (16, "SK302")]


def test_fastapi_and_flask_endpoints_registered_without_a_request_parameter() -> None:
    """FastAPI endpoints take a body model (``item: Item``), ``request`` second or
    nothing; ``api_route``, ``add_api_route``, Flask's ``add_url_rule``, an HTTP
    middleware and a dependency (``Depends``, run for every request) register them too.
    (``@app.post`` was recognised before: the first case passed.)"""
    src = """
    from fastapi import APIRouter, Depends, FastAPI, Request
    app = FastAPI()
    router = APIRouter()
    ITEMS = []
    SEEN = set()
    @app.post("/items")
    def create(item: Item, request: Request):
        ITEMS.append(item)
    @router.api_route("/both", methods=["GET", "POST"])
    async def both(item: Item):
        ITEMS.append(item)
    async def legacy(item: Item):
        ITEMS.append(item)
    app.add_api_route("/legacy", legacy, methods=["POST"])
    def remember(user: str = Header()):
        SEEN.add(user)
        return user
    @app.get("/me")
    def me(user: str = Depends(remember)):
        return user
    def flask_view():
        ITEMS.append(1)
    flask_app.add_url_rule("/f", "f", flask_view)
    @app.middleware("http")
    async def timing(req, call_next):
        ITEMS.append(req.url.path)
        return await call_next(req)
    """
    assert codes(src) == [(9, "SK301"), (12, "SK301"), (14, "SK301"), (17, "SK301"), (23, "SK301"),
                          (27, "SK301")]


def test_functions_passed_to_anything_but_a_route_are_not_handlers() -> None:
    """A startup hook, a thread's target, a sort key or a background task's function
    is not a request handler; neither is a function nothing registers, whatever its
    parameter is called, nor a string naming an endpoint."""
    src = """
    import threading
    CACHE = {}
    def fill():
        CACHE["rates"] = load()
    def normalize(name):
        CACHE[name] = name.lower()
        return CACHE[name]
    def handle(item):
        CACHE[item.id] = item
    async def home(req):
        return PlainTextResponse(str(len(CACHE)))
    app = Starlette(routes=[Route("/", home)], on_startup=[fill])
    app.add_event_handler("startup", fill)
    threading.Thread(target=fill)
    ordered = sorted(["B", "a"], key=normalize)
    flask_app.add_url_rule("/h", "handle", view_func=views.handle)
    tasks = BackgroundTask(handle, item)
    """
    assert codes(src) == []


def test_executor_tasks_submitted_at_import_or_at_startup() -> None:
    """``executor.submit(loop)`` at import (or in a function called at import) runs
    a background task in every worker, like a thread; in a startup hook (decorated,
    named, or registered with ``on_startup``/``lifespan``/``add_event_handler``)
    once per worker."""
    src = """
    import concurrent.futures
    from concurrent.futures import ThreadPoolExecutor
    executor = ThreadPoolExecutor(max_workers=2)
    executor.submit(refresh_forever)
    ThreadPoolExecutor(1).submit(poll)
    concurrent.futures.ThreadPoolExecutor().submit(poll)
    def start_polling():
        background_executor.submit(poll)
    start_polling()
    @app.on_event("startup")
    def start():
        executor.submit(refresh_forever)
    def post_fork(server, worker):
        pool = ThreadPoolExecutor()
        pool.submit(refresh_forever)
    def warm():
        executor.submit(refresh_forever)
    async def app_lifespan(app):
        threading.Thread(target=refresh_forever).start()
        yield
    def on_boot():
        executor.submit(poll)
    app = Starlette(on_startup=[warm], lifespan=app_lifespan)
    app.add_event_handler("startup", on_boot)
    """
    assert codes(src) == [(5, "SK401"), (6, "SK401"), (7, "SK401"), (9, "SK401"), (13, "SK402"),
                          (16, "SK402"), (18, "SK402"), (20, "SK402"), (23, "SK402")]


def test_executor_work_that_ends_before_import_does_or_runs_per_request() -> None:
    """A pool used in a ``with`` block waits for its tasks before the import goes on;
    a task submitted by a handler is that request's work; an executor created but
    not used, or used by a function nothing calls at import, starts nothing;
    ``submit`` of something that is not an executor is not a task."""
    src = """
    import os
    from concurrent.futures import ThreadPoolExecutor
    executor = ThreadPoolExecutor(max_workers=4)
    with ThreadPoolExecutor() as pool:
        SIZES = list(pool.map(os.path.getsize, FILES))
    with ThreadPoolExecutor() as executor2:
        FIRST = executor2.submit(load).result()
    form.submit()
    @app.post("/resize")
    def resize():
        executor.submit(make_thumbnail, request.files["photo"].read())
        return "queued"
    def later():
        executor.submit(refresh_forever)
    if __name__ == "__main__":
        executor.submit(refresh_forever)
    """
    assert codes(src) == []


def test_memoized_http_fetches_are_per_worker_copies_of_remote_data() -> None:
    """``lru_cache``/``cache`` (or cachetools', or async_lru's ``alru_cache``) on a
    function fetching over HTTP (requests, httpx, urllib, aiohttp, a module-level
    client) keeps each worker's own, aging copy of remote data."""
    src = """
    import functools, urllib.request
    from urllib.request import urlopen
    import aiohttp, cachetools.func, httpx, requests
    from async_lru import alru_cache
    api = httpx.Client(base_url="https://api.example.com")
    @functools.lru_cache(maxsize=128)
    def exchange_rate(currency):
        return requests.get(f"https://rates.example.com/{currency}", timeout=5).json()
    @functools.cache
    def profile(uid):
        return api.get(f"/users/{uid}").json()
    @functools.cache
    def feed():
        with urllib.request.urlopen("https://example.com/feed") as r:
            return r.read()
    @functools.lru_cache
    def jwks():
        with httpx.Client() as client:
            return client.get(JWKS_URL).json()
    @functools.cache
    def page():
        return urlopen(URL).read()
    @cachetools.func.ttl_cache(ttl=300)
    def remote_config():
        return requests.Session().post(CONFIG_URL).json()
    @alru_cache
    async def avatar(uid):
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://cdn.example.com/{uid}") as r:
                return await r.read()
    """
    assert codes(src) == [(7, "SK303"), (10, "SK303"), (13, "SK303"), (17, "SK303"), (21, "SK303"),
                          (24, "SK303"), (27, "SK303")]


def test_memoized_clients_and_lookups_that_fetch_nothing() -> None:
    """Building a client once per process, parsing a URL, reading a dict or the
    environment, or Flask's ``request`` (not ``requests``) fetches nothing; an HTTP
    fetch that is not memoized keeps no copy."""
    src = """
    import functools, os, urllib.parse
    import httpx, requests
    @functools.lru_cache
    def session():
        return requests.Session()
    @functools.cache
    def client():
        return httpx.Client(base_url=os.environ.get("API_URL", ""))
    @functools.cache
    def host(url):
        return urllib.parse.urlparse(url).hostname
    @functools.cache
    def setting(name):
        return os.environ.get(name, CONFIG.get(name))
    @functools.cache
    def agent():
        return requests.utils.default_user_agent()
    @functools.cache
    def arg(name):
        return request.args.get(name)
    def fetch(url):
        return requests.get(url, timeout=5).json()
    """
    assert codes(src) == []
