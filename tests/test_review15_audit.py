"""``statekit audit`` across the files it is given, run as a user runs it (the console
script, in a subprocess, on a small app written to a temporary directory): a Django view
named by ``path()`` in another module's ``urls.py`` (an ``include()``d URLconf's too, a
class-based view's ``.as_view()``), a Starlette/FastAPI endpoint or dependency imported
from another module, and an asyncio task a startup hook awaits before it returns. Each
positive case failed before its fix; each near miss shows what the audit still does not
take for a handler (or still takes for background work)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

STATEKIT = str(Path(sys.executable).with_name("statekit"))


def _audit(tmp_path: Path, files: dict[str, str], *paths: str) -> list[tuple[str, int, str]]:
    """Write *files* under *tmp_path*, run ``statekit audit PATH... --format json`` there:
    the findings as ``(path, line, code)``."""
    for name, source in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(source).lstrip("\n"))
    proc = subprocess.run([STATEKIT, "audit", *paths, "--format", "json"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    found = json.loads(proc.stdout)
    assert proc.returncode == (1 if found else 0), proc.stderr
    return [(f["path"], f["line"], f["code"]) for f in found]


# -- Django: urls.py names views of views.py ------------------------------------------------

DJANGO = {
    "proj/manage.py": "",
    "proj/mysite/__init__.py": "",
    "proj/mysite/urls.py": """
        from django.urls import include, path
        from shop import views
        from shop.views import Counter
        urlpatterns = [
            path("", views.index, name="index"),
            path("count/", Counter.as_view()),
            path("blog/", include("blog.urls")),
        ]
    """,
    "proj/shop/__init__.py": "",
    "proj/shop/views.py": """
        from django.http import HttpResponse
        from .base import Page
        HITS = {}
        def index(req):
            HITS["index"] = HITS.get("index", 0) + 1
            return HttpResponse("hi")
        class Counter(Page):
            def get(self, req):
                return HttpResponse(str(self.bump()))
            def bump(self):
                global total
                total += 1
                return total
    """,
    "proj/blog/__init__.py": "",
    "proj/blog/urls.py": """
        from django.urls import path
        from . import views
        urlpatterns = [path("", views.archive)]
    """,
    "proj/blog/views.py": """
        SEEN = []
        def archive(r):
            SEEN.append(r.path)
            return None
    """,
}


def test_audit_django_views_named_in_another_modules_urlpatterns(tmp_path: Path) -> None:
    """``path("", views.index)`` in ``mysite/urls.py`` makes ``index`` of ``shop/views.py``
    a view (its request parameter called ``req``); ``Counter.as_view()`` every method of
    ``Counter`` (its base ``Page`` from elsewhere, no ``View`` in its name); the
    ``include()``d ``blog/urls.py``'s ``from . import views`` its own app's ``views``. Also
    with the files named one by one on the command line."""
    expected = [("proj/blog/views.py", 3, "SK301"), ("proj/shop/views.py", 5, "SK301"),
                ("proj/shop/views.py", 11, "SK302")]
    assert _audit(tmp_path, DJANGO, "proj") == expected
    files = ["proj/mysite/urls.py", "proj/shop/views.py", "proj/blog/urls.py", "proj/blog/views.py"]
    assert _audit(tmp_path, {}, *files) == expected


def test_audit_django_names_resolve_to_the_imported_module_only(tmp_path: Path) -> None:
    """Near misses: ``views`` imported from ``other.views`` names nothing of
    ``shop/views.py`` (a function and a class of the same names there write state);
    ``from . import views`` in one app's urls is not the other app's; a view named outside
    a URL pattern, or by a module that does not import it, is no view; ``shop/views.py``
    alone (its urls not given) has no handler."""
    files = {
        "proj/mysite/urls.py": """
            from django.urls import path
            from other import views
            from shop import views as shop_views
            handler = shop_views.index
            urlpatterns = [path("", views.index), path("c/", views.Counter.as_view())]
        """,
        "proj/other/__init__.py": "",
        "proj/other/views.py": """
            def index(request):
                return None
            class Counter:
                def get(self, request):
                    return None
        """,
        "proj/blog/urls.py": """
            from django.urls import path
            from . import views
            urlpatterns = [path("", views.archive)]
        """,
        "proj/blog/views.py": "def archive(request):\n    return None\n",
        "proj/news/urls.py": """
            from django.urls import path
            urlpatterns = [path("", views.archive)]
        """,
        "proj/shop/__init__.py": "",
        "proj/shop/views.py": DJANGO["proj/shop/views.py"],
        "proj/shop/base.py": "",
        "proj/news/views.py": DJANGO["proj/blog/views.py"],
    }
    assert _audit(tmp_path, files, "proj") == []
    assert _audit(tmp_path, {}, "proj/shop/views.py") == []


# -- Starlette/FastAPI: endpoints and dependencies of other modules --------------------------

STARLETTE = {
    "svc/__init__.py": "",
    "svc/app.py": """
        from fastapi import Depends, FastAPI
        from starlette.applications import Starlette
        from starlette.routing import Route
        from svc import handlers
        from svc.deps import current_user
        from .api import router
        app = FastAPI()
        app.add_api_route("/items", handlers.create, methods=["POST"])
        app.include_router(router)
        star = Starlette(routes=[Route("/list", handlers.listing)])
        @app.get("/me")
        def me(user: str = Depends(current_user)):
            return user
    """,
    "svc/handlers.py": """
        ITEMS = []
        async def create(item: dict):
            ITEMS.append(item)
            return item
        async def listing(req):
            global served
            served += 1
            return ITEMS
    """,
    "svc/deps.py": """
        SEEN = {}
        def current_user(token: str = ""):
            SEEN[token] = True
            return token
    """,
    "svc/api.py": """
        from fastapi import APIRouter
        from fastapi.routing import APIRoute
        from . import crud
        router = APIRouter(routes=[APIRoute("/tags", crud.tag)])
        router.add_api_route("/save", crud.save, methods=["POST"])
    """,
    "svc/crud.py": """
        TAGS = set()
        SAVED = []
        def tag(name: str):
            TAGS.add(name)
        def save(body: dict):
            SAVED.append(body)
    """,
}


def test_audit_starlette_and_fastapi_endpoints_of_other_modules(tmp_path: Path) -> None:
    """``app.add_api_route("/items", handlers.create)``, ``Route("/list",
    handlers.listing)``, ``Depends(current_user)`` imported from ``svc.deps``, and an
    ``APIRouter`` of another module (``APIRoute("/tags", crud.tag)``, ``add_api_route``)
    that ``app.include_router(router)`` serves: each a handler, whatever its parameters."""
    assert _audit(tmp_path, STARLETTE, "svc") == [
        ("svc/crud.py", 4, "SK301"), ("svc/crud.py", 6, "SK301"), ("svc/deps.py", 3, "SK301"),
        ("svc/handlers.py", 3, "SK301"), ("svc/handlers.py", 6, "SK302"),
    ]


def test_audit_starlette_names_resolve_through_the_registering_modules_imports(tmp_path: Path) -> None:
    """Near misses: ``handlers`` bound to an object of the module (not imported), an
    endpoint of ``svc.handlers`` while ``other/handlers.py`` has a function of the same
    name writing state, and a function of the imported module no route names."""
    files = {
        "svc/__init__.py": "",
        "svc/app.py": """
            from fastapi import FastAPI
            from starlette.routing import Route
            from svc import handlers
            class Handlers:
                def helper(self, x): return x
            local = Handlers()
            app = FastAPI()
            app.add_api_route("/items", handlers.create)
            routes = [Route("/x", local.helper)]
        """,
        "svc/handlers.py": """
            ITEMS = []
            def create(item: dict):
                return item
            def helper(item):
                ITEMS.append(item)
        """,
        "other/__init__.py": "",
        "other/handlers.py": STARLETTE["svc/handlers.py"],
    }
    assert _audit(tmp_path, files, ".") == []


# -- asyncio: a task a startup hook awaits ---------------------------------------------------


def test_audit_startup_tasks_awaited_by_their_hook_are_not_background(tmp_path: Path) -> None:
    """``t = asyncio.create_task(load())`` in a startup hook (or a lifespan before its
    ``yield``) that then awaits ``t`` (directly, in ``gather``, under ``wait_for``) is
    done when the worker starts serving: no SK402."""
    assert _audit(tmp_path, {"main.py": """
        import asyncio
        from contextlib import asynccontextmanager
        from fastapi import FastAPI
        @asynccontextmanager
        async def lifespan(app):
            task = asyncio.create_task(load())
            await task
            yield
        app = FastAPI(lifespan=lifespan)
        @app.on_event("startup")
        async def warm():
            t = asyncio.create_task(load())
            u = asyncio.ensure_future(load())
            v = asyncio.get_running_loop().run_in_executor(None, load_sync)
            await prepare()
            await asyncio.gather(t, u)
            await asyncio.wait_for(v, 30)
    """}, "main.py") == []


def test_audit_startup_tasks_left_running_are_still_background(tmp_path: Path) -> None:
    """Near misses: a task kept but not awaited, one awaited only after the lifespan's
    ``yield`` (it ran while the worker served), and of two tasks the one not awaited."""
    assert _audit(tmp_path, {"main.py": """
        import asyncio
        from contextlib import asynccontextmanager
        from starlette.applications import Starlette
        @asynccontextmanager
        async def lifespan(app):
            task = asyncio.create_task(poll_forever())
            yield
            task.cancel()
            await task
        async def start(app):
            t = asyncio.create_task(poll_forever())
            await asyncio.sleep(0)
            app.state.poller = t
        async def both():
            t = asyncio.create_task(refresh())
            u = asyncio.create_task(refresh())
            await u
        app = Starlette(lifespan=lifespan, on_startup=[start, both])
    """}, "main.py") == [("main.py", 6, "SK402"), ("main.py", 11, "SK402"), ("main.py", 15, "SK402")]
