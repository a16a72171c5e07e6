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
