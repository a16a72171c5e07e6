"""``statekit audit PATH``: find per-process state in a codebase, statically.

The check reads source files with :mod:`ast` and never imports them, so it is safe
to run on any checkout (CI, pre-commit). Each finding names one stateful habit and
links to the section of ``docs/migration.md`` that replaces it:

=======  ==========================================================================
SK101    an uploaded file (``FileStorage.save``) written to a local path in a handler
SK102    ``open(..., "wb")`` (or another write mode) in a request handler
SK103    files stored on the local disk (Django ``FileSystemStorage`` / ``MEDIA_ROOT``)
SK201    Flask-Session keeps sessions in local files or process memory
SK202    Django ``SESSION_ENGINE`` is file-based or a cache backed by process memory
SK301    a module-level dict/list/set (or a class attribute holding one, or an attribute
         of a module-level object) is written from a request handler
SK302    ``global`` in a request handler
SK303    ``lru_cache``/``cache`` (or cachetools' ``cached``/``ttl_cache``..., async_lru's
         ``alru_cache``) on a function that queries a database or fetches over HTTP
SK304    a cache local to one process or machine: Django ``CACHES`` locmem/file,
         Flask-Caching ``SimpleCache``/``FileSystemCache``, a module-level cachelib or
         cachetools cache
SK305    an SQLite database in one process's memory or in a file per worker (its pid, a
         fresh temporary directory)
SK401    a timer, thread or scheduler started, or a task submitted to an executor, at
         import (once per worker process)
SK402    the same per worker (post_fork, ready(), app factory, a startup hook or lifespan,
         decorated or registered: ``on_startup=``, ``lifespan=``, ``add_event_handler``),
         not awaited there (``t = create_task(...)`` ... ``await t`` before a lifespan's yield)
SK501    sticky sessions in a load balancer config (``ip_hash``, ``sticky``, ``hash $cookie_``)
=======  ==========================================================================

Heuristics, not proofs: a handler is a function with a route decorator
(``@app.route``, ``@bp.post``, ``@app.api_route``, ``@app.middleware``...), one a
route registers (``Route("/", home)``, ``WebSocketRoute``, ``add_route``,
``add_api_route``, ``add_url_rule``, Django's ``path``/``re_path``/``url`` in
``urlpatterns``, every method of a class whose ``as_view()`` they name) or a FastAPI
dependency (``Depends(f)``) names, whatever its parameters are called: in the same module,
or in another of the files checked, named through the registering module's imports
(``from shop import views`` ... ``path("", views.index)``; never imported), a function or
method taking ``request`` first, or a ``get``/``post``/... method of a class; functions
of the same module it calls by name count as part of it. Silence one line with ``# statekit: ignore`` (or
``# statekit: ignore[SK301]``); skip paths with a ``.statekitignore`` file (one glob
per line, relative to its directory, like ``.gitignore``). Paths named on the command
line are always checked. Test files (``tests/``, ``test_*.py``, ``conftest.py``) are
skipped unless ``--include-tests``: they record calls in module-level lists on purpose.

Exit status: 0 when nothing is found, 1 when something is (for CI) or when a file could
not be checked (it cannot be read as UTF-8 or does not parse: what it holds is unknown,
as ruff's and flake8's E999), 2 on usage errors (a path that does not exist, a code or
prefix in ``--select``/``--ignore`` that names no rule).
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

__all__ = ["RULES", "Finding", "audit_paths", "audit_source", "main"]

GUIDE = "docs/migration.md"

#: code -> (guide section, short title)
RULES: dict[str, tuple[str, str]] = {
    "SK101": ("local-upload-folder", "upload saved to a local path"),
    "SK102": ("local-upload-folder", "local file written in a request handler"),
    "SK103": ("local-upload-folder", "Django files on the local disk"),
    "SK201": ("sessions-in-files-or-memory", "Flask-Session in local files or memory"),
    "SK202": ("sessions-in-files-or-memory", "Django sessions in local files or memory"),
    "SK301": ("module-level-cache", "module-level container written from a handler"),
    "SK302": ("module-level-cache", "global in a request handler"),
    "SK303": ("module-level-cache", "lru_cache on a database query or HTTP fetch"),
    "SK304": ("module-level-cache", "cache local to one process (Django, Flask-Caching, cachelib, "
                                    "cachetools)"),
    "SK305": ("module-level-cache", "SQLite database in one process's memory or a per-worker file"),
    "SK401": ("per-worker-scheduled-computation", "timer or executor task started at import"),
    "SK402": ("per-worker-scheduled-computation", "timer or executor task started per worker"),
    "SK501": ("sticky-sessions", "sticky sessions"),
}

_SKIP_DIRS = {".git", ".hg", ".svn", ".venv", "venv", "env", "node_modules", "__pycache__", ".tox",
              ".nox", ".mypy_cache", ".ruff_cache", ".pytest_cache", "build", "dist", "site-packages"}
_HTTP_METHODS = {"get", "post", "put", "patch", "delete", "head", "options"}
_ROUTE_DECORATORS = _HTTP_METHODS | {"route", "before_request", "after_request", "errorhandler",
                                     "api_view", "require_POST", "require_GET", "require_http_methods",
                                     "login_required", "websocket", "api_route", "websocket_route",
                                     "middleware"}
#: calls that register the functions they are given as endpoints (Starlette, FastAPI, Flask)
#: or as dependencies run for each request (FastAPI)
_ROUTE_CALLS = {"Route", "WebSocketRoute", "APIRoute", "APIWebSocketRoute", "add_route", "add_api_route",
                "add_websocket_route", "add_api_websocket_route", "add_url_rule", "Depends", "Security"}
_ROUTE_KEYWORDS = {"endpoint", "view_func", "dependency"}
#: Django's URL patterns, ``path("x/", view)`` in ``urlpatterns`` (``url`` before Django 4)
_URL_PATTERNS = {"path", "re_path", "url"}
_MUTATORS = {"append", "extend", "insert", "update", "setdefault", "add", "pop", "popitem", "remove",
             "discard", "clear", "appendleft", "__setitem__"}
_CONTAINER_CALLS = {"dict", "list", "set", "defaultdict", "OrderedDict", "Counter", "deque"}
_DB_CALLS = {"execute", "executemany", "executescript", "fetchone", "fetchall", "fetchmany", "scalar",
             "scalars", "query", "raw", "cursor"}
_THREAD_CLASSES = {"Timer", "Thread", "BackgroundScheduler", "AsyncIOScheduler", "GeventScheduler",
                   "TornadoScheduler", "QtScheduler", "scheduler", "RepeatedTimer"}
_EXECUTOR_CLASSES = {"ThreadPoolExecutor", "ProcessPoolExecutor"}
#: calls that start asyncio (or anyio/trio) work running on by itself unless awaited: a task
#: (``asyncio.create_task``, ``loop.create_task``, a task group's), an executor's job.
#: (``asyncio.to_thread(f)`` runs only once awaited or made a task: the task is the start.)
_ASYNC_STARTS = {"create_task", "ensure_future", "start_soon", "run_in_executor"}
#: modules whose functions (``requests.get``), or clients (``httpx.Client(...)``), fetch over HTTP
_HTTP_MODULES = {"requests", "httpx", "aiohttp", "urllib3"}
#: their clients' classes (``Client`` and ``Session`` only with the module's name: other libraries have them)
_HTTP_CLIENTS = {"Client", "AsyncClient", "Session", "session", "ClientSession", "PoolManager"}
_HTTP_SENDS = _HTTP_METHODS | {"request", "send", "stream", "urlopen", "urlretrieve"}
_PER_WORKER_FUNCS = {"post_fork", "post_worker_init", "create_app", "make_app", "app_factory", "ready",
                     "lifespan"}
#: decorators of functions every worker runs once (startup hooks)
_PER_WORKER_DECORATORS = {"on_event", "before_first_request", "before_serving", "on_startup"}
_CACHE_DECORATORS = {"lru_cache", "cache", "ttl_cache", "tlru_cache", "lfu_cache", "rr_cache", "fifo_cache",
                     "mru_cache", "alru_cache"}
#: module-level constructors of one process's cache -> their library
_LOCAL_CACHES = {"SimpleCache": "cachelib", "FileSystemCache": "cachelib", "TTLCache": "cachetools",
                 "LRUCache": "cachetools", "LFUCache": "cachetools", "RRCache": "cachetools",
                 "FIFOCache": "cachetools", "MRUCache": "cachetools", "TLRUCache": "cachetools"}
_TEMP_CALLS = {"getpid", "mkdtemp", "mkstemp", "gettempdir", "TemporaryDirectory", "NamedTemporaryFile"}
_SQLITE_MEMORY_RE = re.compile(r"^sqlite(\+\w+)?://(/:memory:.*)?$")
#: modules whose ``open(path, mode)`` writes a file like the builtin's
_OPEN_MODULES = {"aiofiles", "io", "codecs", "gzip", "bz2", "lzma", "anyio"}
_IGNORE_RE = re.compile(r"#\s*statekit:\s*ignore(?:\[([A-Z0-9, ]+)\])?")
_STICKY_RE = re.compile(
    r"^\s*(ip_hash\s*;|sticky\b|hash\s+\$(?:cookie_|remote_addr)|balance\s+source\b|"
    r"cookie\s+\S+\s+insert\b|appsession\b)"
)


@dataclass(frozen=True, order=True)
class Finding:
    """One habit found: where, which rule, and what to read."""

    path: str
    line: int
    code: str
    message: str

    @property
    def doc(self) -> str:
        return f"{GUIDE}#{RULES[self.code][0]}"

    def format(self) -> str:
        return f"{self.path}:{self.line}: {self.code} {self.message} ({self.doc})"

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "doc": self.doc}


def _name(node: ast.AST) -> str:
    """The last dotted part of a name or attribute (``functools.lru_cache`` -> ``lru_cache``)."""
    if isinstance(node, ast.Call):
        return _name(node.func)
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return ""


def _const_str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


_Func = ast.FunctionDef | ast.AsyncFunctionDef


class _Module:
    """The facts about one module the rules need."""

    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.functions: dict[str, _Func] = {}
        self.handlers: list[tuple[_Func, str]] = []  # (function, why)
        self.containers: dict[str, int] = {}  # module-level mutable container -> line
        self.thread_names: set[str] = set()  # names bound to Thread/Timer/scheduler objects
        self.classes: dict[str, dict[str, _Func]] = {}  # module-level class -> its methods
        self.owner: dict[int, str] = {}  # id(method) -> the name of its module-level class
        self.objects: dict[str, int] = {}  # module-level SimpleNamespace/instance of a module class -> line
        self.executor_names: set[str] = set()  # names bound to a ThreadPoolExecutor/ProcessPoolExecutor
        self.http_clients: set[str] = set()  # names bound to an HTTP client (httpx.Client, requests.Session)
        self.startup: set[int] = set()  # id() of the functions registered as startup hooks or lifespan
        #: what this module's route calls register, as dotted names (``views.index``, ``views.Counter``
        #: of ``views.Counter.as_view()``): resolved in other modules by :func:`_link`
        self.registrations: list[tuple[list[str], str]] = []
        self.imports: list[ast.Import | ast.ImportFrom] = []
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.functions[node.name] = node
            elif isinstance(node, ast.ClassDef):
                methods = self.classes[node.name] = {}
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        methods[item.name] = item
                        self.owner[id(item)] = node.name
                    elif isinstance(item, (ast.Assign, ast.AnnAssign)) and item.value is not None:
                        names = item.targets if isinstance(item, ast.Assign) else [item.target]
                        for t in names:
                            if isinstance(t, ast.Name) and self._is_container(item.value):
                                self.containers[f"{node.name}.{t.id}"] = item.lineno
            elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                targets: list[ast.expr] = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Name):
                        if self._is_container(node.value):
                            self.containers[t.id] = node.lineno
                        elif (isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name)
                              and node.value.func.id in {"SimpleNamespace", *self.classes}):
                            self.objects[t.id] = node.lineno
        defs: dict[str, list[_Func]] = {}  # every function of the module, nested ones too, by name
        registered: list[tuple[str, str]] = []  # (function or class name, "view", "endpoint", "dependency")
        startup: list[str] = []
        for any_node in ast.walk(tree):
            for bound, value in _bindings(any_node):
                if _name(value) in _THREAD_CLASSES:
                    self.thread_names.add(bound)
                elif _name(value) in _EXECUTOR_CLASSES:
                    self.executor_names.add(bound)
                elif _is_http_client(value):
                    self.http_clients.add(bound)
            if isinstance(any_node, ast.Call):
                for target, kind in _route_registrations(any_node):
                    dotted = _dotted(target)
                    if len(dotted) == 1:
                        registered.append((dotted[0], kind))
                    if dotted:
                        self.registrations.append((dotted, kind))
                startup.extend(_startup_registrations(any_node))
            elif isinstance(any_node, (ast.Import, ast.ImportFrom)):
                self.imports.append(any_node)
            if isinstance(any_node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                defs.setdefault(any_node.name, []).append(any_node)
                why = self._handler_reason(any_node)
                if why:
                    self.handlers.append((any_node, why))
            elif isinstance(any_node, ast.ClassDef) and _is_view_class(any_node):
                for item in any_node.body:
                    if (isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                            and item.name in _HTTP_METHODS
                            and not any(h is item for h, _ in self.handlers)):
                        self.handlers.append((item, f"view method {any_node.name}.{item.name}"))
        for name, kind in registered:  # Route("/", home): home is an endpoint, whatever its parameters
            self.register(defs.get(name, []), name, kind)
        self.startup.update(id(func) for name in startup for func in defs.get(name, []))

    def register(self, funcs: Iterable[_Func], name: str, kind: str) -> None:
        """Make *funcs* (named *name*) handlers, or every method of class *name* when a route
        registers its ``as_view()`` (Django makes one instance per request: all of it runs
        for a request)."""
        if kind == "class view":
            funcs = self.classes.get(name, {}).values()
        for func in funcs:
            if not any(h is func for h, _ in self.handlers):
                why = f"view method {name}.{func.name}" if kind == "class view" else f"{kind} {func.name}()"
                self.handlers.append((func, why))

    @staticmethod
    def _is_container(value: ast.AST) -> bool:
        if isinstance(value, (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)):
            return True
        return isinstance(value, ast.Call) and _name(value) in _CONTAINER_CALLS

    @staticmethod
    def _handler_reason(func: _Func) -> str:
        for dec in func.decorator_list:
            if _name(dec) in _ROUTE_DECORATORS:
                return f"handler {func.name}()"
        args = func.args.posonlyargs + func.args.args
        names = [a.arg for a in args]
        if names[:1] == ["request"] or names[:2] == ["self", "request"]:
            return f"view {func.name}()"
        return ""

    def handler_scope(self) -> dict[int, tuple[_Func, str]]:
        """Handlers plus the module functions they call by name, transitively."""
        scope: dict[int, tuple[_Func, str]] = {id(f): (f, why) for f, why in self.handlers}
        todo = [f for f, _ in self.handlers]
        while todo:
            func = todo.pop()
            for node in ast.walk(func):
                if not isinstance(node, ast.Call):
                    continue
                callee = None
                if isinstance(node.func, ast.Name):
                    callee = self.functions.get(node.func.id)
                elif isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
                    callee = self.classes.get(node.func.value.id, {}).get(node.func.attr)  # Registry.add()
                if callee is not None and id(callee) not in scope:
                    scope[id(callee)] = (callee, f"{callee.name}() called from {func.name}()")
                    todo.append(callee)
        return scope


def _bindings(node: ast.AST) -> Iterator[tuple[str, ast.Call]]:
    """``(name, call)`` for ``name = Cls(...)`` and ``with Cls(...) as name``."""
    if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
        yield from ((t.id, node.value) for t in node.targets if isinstance(t, ast.Name))
    elif isinstance(node, (ast.With, ast.AsyncWith)):
        for item in node.items:
            if isinstance(item.context_expr, ast.Call) and isinstance(item.optional_vars, ast.Name):
                yield item.optional_vars.id, item.context_expr


def _is_http_client(call: ast.Call) -> bool:
    """``httpx.Client(...)``, ``requests.Session()``, ``aiohttp.ClientSession()``..."""
    func = call.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return func.value.id in _HTTP_MODULES and func.attr in _HTTP_CLIENTS
    return isinstance(func, ast.Name) and func.id in _HTTP_CLIENTS - {"Client", "Session", "session"}


def _route_registrations(call: ast.Call) -> Iterator[tuple[ast.expr, str]]:
    """What *call* registers, a name or a dotted name (:func:`_dotted`) and its kind:
    ``Route("/", home)``, ``app.add_api_route("/", items.create)``, ``add_url_rule("/", "i",
    index)``, Django's ``path("x/", views.index)`` and ``path("c/", views.Counter.as_view())``
    (the class, kind ``"class view"``), ``Depends(current_user)``."""
    name = _name(call)
    if name in _URL_PATTERNS:  # a route first (a string, an f-string, a gettext_lazy() call), then the view
        route = call.args[0] if call.args else None
        view = (call.args[1] if len(call.args) > 1
                else next((k.value for k in call.keywords if k.arg == "view"), None))
        routed = _const_str(route) is not None or isinstance(route, (ast.JoinedStr, ast.Call))
        if view is not None and routed:
            func = view.func if isinstance(view, ast.Call) else None
            if isinstance(func, ast.Attribute) and func.attr == "as_view":
                yield func.value, "class view"
            else:
                yield view, "view"
        return
    if name not in _ROUTE_CALLS:
        return
    kind = "dependency" if name in ("Depends", "Security") else "endpoint"
    for arg in [*call.args, *(k.value for k in call.keywords if k.arg in _ROUTE_KEYWORDS)]:
        yield arg, kind


def _dotted(node: ast.AST) -> list[str]:
    """``["views", "index"]`` for ``views.index``, ``["home"]`` for ``home``; ``[]`` for
    anything else (a call, a string, a subscript)."""
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return [*head, node.attr] if head else []
    return []


def _startup_registrations(call: ast.Call) -> Iterator[str]:
    """The functions *call* registers as startup hooks: ``Starlette(on_startup=[warm],
    lifespan=app_lifespan)``, ``app.add_event_handler("startup", warm)``."""
    for kw in call.keywords:
        if kw.arg in ("on_startup", "lifespan"):
            values = kw.value.elts if isinstance(kw.value, (ast.List, ast.Tuple)) else [kw.value]
            yield from (v.id for v in values if isinstance(v, ast.Name))
    if (_name(call) == "add_event_handler" and len(call.args) == 2 and _const_str(call.args[0]) == "startup"
            and isinstance(call.args[1], ast.Name)):
        yield call.args[1].id


_VIEW_BASES = ("View", "ViewSet", "Resource", "Handler", "Endpoint", "APIView")


def _is_view_class(cls: ast.ClassDef) -> bool:
    """A class-based view (``MethodView``, ``View``, ``APIView``, a ``*Handler``...)."""
    return any(_name(b).endswith(_VIEW_BASES) for b in cls.bases)


def _lazy_init_only(func: _Func, name: str) -> bool:
    """Whether every assignment to global *name* in *func* (if any) sits under
    ``if name is None:`` -- a lazily built per-process singleton, not user state."""
    guarded: set[int] = set()
    for node in ast.walk(func):
        if (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                and isinstance(node.test.left, ast.Name) and node.test.left.id == name
                and isinstance(node.test.ops[0], ast.Is) and _is_none(node.test.comparators[0])):
            guarded.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    stores = [n for n in ast.walk(func) if isinstance(n, ast.Name) and n.id == name
              and isinstance(n.ctx, ast.Store)]
    return all(id(n) in guarded for n in stores)


def _is_none(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _locals_of(func: _Func) -> set[str]:
    names = {a.arg for a in func.args.posonlyargs + func.args.args + func.args.kwonlyargs}
    declared_global: set[str] = set()
    for node in ast.walk(func):
        if isinstance(node, ast.Global):
            declared_global.update(node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names - declared_global


def _is_local_path(node: ast.AST) -> bool:
    """Whether an argument looks like a filesystem path (not a Django ``save()`` flag)."""
    if isinstance(node, (ast.JoinedStr, ast.Constant)) and not isinstance(getattr(node, "value", ""), bool):
        return isinstance(node, ast.JoinedStr) or isinstance(node.value, str)
    if isinstance(node, ast.Call):
        return _name(node) in {"join", "Path", "abspath", "realpath", "safe_join", "joinpath"}
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        return True
    if isinstance(node, (ast.Name, ast.Attribute)):
        text = _name(node).lower()
        return any(w in text for w in ("path", "dest", "folder", "dir", "upload", "target"))
    return False


def _write_mode(call: ast.Call) -> str | None:
    mode: ast.AST | None = call.args[1] if len(call.args) > 1 else None
    for kw in call.keywords:
        if kw.arg == "mode":
            mode = kw.value
    text = _const_str(mode)
    return text if text and any(c in text for c in "wax") else None


def _open_mode(call: ast.Call) -> str | None:
    """The write mode of ``open(path, mode)``, ``aiofiles.open(path, mode)`` or
    ``<path>.open(mode)`` (``None``: not a write, or not a file on this machine)."""
    func = call.func
    if isinstance(func, ast.Name):
        return _write_mode(call)
    if not isinstance(func, ast.Attribute):
        return None
    if isinstance(func.value, ast.Name) and func.value.id in _OPEN_MODULES:
        return _write_mode(call)
    if isinstance(func.value, ast.Name) and func.value.id in ("shelve", "dbm"):  # flag "c" by default
        flag = (call.args[1] if len(call.args) > 1
                else next((k.value for k in call.keywords if k.arg == "flag"), None))
        text = _const_str(flag) if flag is not None else "c"
        return text if text and any(c in text for c in "wcn") else None
    if _is_local_path(func.value):  # pathlib: the mode comes first
        return _write_mode(ast.Call(func=func, args=[func.value, *call.args], keywords=call.keywords))
    return None


def _is_upload(node: ast.AST, names: set[str]) -> bool:
    """Whether *node* is an uploaded file: ``request.files[...]``, ``request.files.get(...)``,
    or a name bound to one."""
    if isinstance(node, ast.Name):
        return node.id in names
    return any(isinstance(n, ast.Attribute) and n.attr == "files" and _name(n.value) == "request"
               for n in ast.walk(node))


def _upload_names(func: _Func) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(func):
        if isinstance(node, (ast.Assign, ast.For)):
            value = node.value if isinstance(node, ast.Assign) else node.iter
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if _is_upload(value, set()):
                names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def _container(node: ast.AST, mod: _Module, local: set[str], owner: str | None) -> str | None:
    """The module-level container (or class attribute) *node* names, if any:
    ``CACHE``, ``Registry.users``, ``cls.users`` in a method of ``Registry``."""
    if isinstance(node, ast.Name):
        return node.id if _mutated(node.id, mod, local) else None
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        cls = owner if node.value.id == "cls" and owner else node.value.id
        name = f"{cls}.{node.attr}"
        if name in mod.containers and (node.value.id == "cls" or node.value.id not in local):
            return name
    return None


def _check_handlers(mod: _Module, out: list[tuple[int, str, str]]) -> None:
    for func, why in mod.handler_scope().values():
        local = _locals_of(func)
        uploads = _upload_names(func)
        owner = mod.owner.get(id(func))
        for node in ast.walk(func):
            if isinstance(node, ast.Global) and not all(_lazy_init_only(func, n) for n in node.names):
                out.append((node.lineno, "SK302",
                            f"`global {', '.join(node.names)}` in {why}: each worker process has its own "
                            "copy, lost on restart"))
            elif isinstance(node, ast.Call):
                fname = _name(node)
                if (fname == "save" and isinstance(node.func, ast.Attribute) and (node.args or node.keywords)
                        and (_is_upload(node.func.value, uploads)
                             or bool(node.args and _is_local_path(node.args[0])))):
                    out.append((node.lineno, "SK101",
                                f"uploaded file saved to a local path in {why}: only this machine has it, "
                                "and a new container starts without it"))
                elif fname == "open" and _open_mode(node):
                    out.append((node.lineno, "SK102",
                                f"open(..., {_open_mode(node)!r}) in {why}: the file stays on this machine"))
                elif fname in ("write_bytes", "write_text") and isinstance(node.func, ast.Attribute):
                    out.append((node.lineno, "SK102",
                                f"Path.{fname}() in {why}: the file stays on this machine"))
                elif fname in _MUTATORS and isinstance(node.func, ast.Attribute):
                    name = _container(node.func.value, mod, local, owner)
                    if name:
                        _report_write(mod, name, node.lineno, why, out)
            elif isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
                targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
                for t in targets:
                    name = _container(t.value, mod, local, owner) if isinstance(t, ast.Subscript) else None
                    if (isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
                            and t.value.id in mod.objects and t.value.id not in local):
                        name = t.value.id
                    if name:
                        _report_write(mod, name, node.lineno, why, out)


def _mutated(name: str, mod: _Module, local: set[str]) -> bool:
    return name in mod.containers and name not in local


def _report_write(mod: _Module, name: str, line: int, why: str, out: list[tuple[int, str, str]]) -> None:
    kind, defined = (("module-level object", mod.objects[name]) if name in mod.objects
                     else ("class attribute" if "." in name else "module-level", mod.containers[name]))
    out.append((line, "SK301",
                f"{kind} {name!r} (line {defined}) is written in {why}: every worker "
                "has a different copy, lost on restart"))


def _check_cached_queries(mod: _Module, out: list[tuple[int, str, str]]) -> None:
    for node in ast.walk(mod.tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        decorator = next((d for d in node.decorator_list if _is_cache_decorator(d)), None)
        if decorator is None:
            continue
        queries = any(
            (isinstance(n, ast.Call) and _name(n) in _DB_CALLS)
            or (isinstance(n, ast.Attribute) and (n.attr in ("objects", "query")  # Django, Flask-SQLAlchemy
                                                  or (n.attr == "session" and _name(n.value) == "db")))
            for n in ast.walk(node)
        )
        if queries:
            out.append((decorator.lineno, "SK303",
                        f"@{_name(decorator)} on {node.name}() which queries a database: each worker "
                        "keeps its own copy and never sees changes"))
        elif any(isinstance(n, ast.Call) and _fetches(n, mod) for n in ast.walk(node)):
            out.append((decorator.lineno, "SK303",
                        f"@{_name(decorator)} on {node.name}() which fetches over HTTP: each worker "
                        "keeps its own copy of the remote data, and they age apart"))


def _fetches(call: ast.Call, mod: _Module) -> bool:
    """``requests.get(...)``, ``client.post(...)`` on an HTTP client, ``urlopen(...)``."""
    func = call.func
    if isinstance(func, ast.Name):
        return func.id in ("urlopen", "urlretrieve")
    if not (isinstance(func, ast.Attribute) and func.attr in _HTTP_SENDS):
        return False
    target = func.value
    if isinstance(target, ast.Call):
        return _is_http_client(target)
    if isinstance(target, ast.Attribute):  # urllib.request.urlopen
        return target.attr == "request" and _name(target.value) == "urllib"
    return isinstance(target, ast.Name) and (target.id in _HTTP_MODULES or target.id in mod.http_clients)


def _is_cache_decorator(dec: ast.AST) -> bool:
    """functools' or cachetools' memoizing decorators; ``cached`` only as cachetools'
    (``@cached(...)``, ``@cachetools.cached``), not Flask-Caching's ``@cache.cached``."""
    name = _name(dec)
    if name in _CACHE_DECORATORS:
        return True
    target = dec.func if isinstance(dec, ast.Call) else dec
    return name == "cached" and (isinstance(target, ast.Name) or (
        isinstance(target, ast.Attribute) and _name(target.value) == "cachetools"))


def _starts_background(call: ast.Call, mod: _Module) -> bool:
    """``thread.start()``, ``scheduler.start()``, ``executor.submit(task)``, or one of
    :data:`_ASYNC_STARTS` (``asyncio.create_task(poll())``: see :func:`_waited_for`)."""
    if _name(call) in _ASYNC_STARTS:
        return True
    if _name(call) not in ("start", "submit") or not isinstance(call.func, ast.Attribute):
        return False
    target = call.func.value
    if _name(call) == "submit":
        if isinstance(target, ast.Call):
            return _name(target) in _EXECUTOR_CLASSES
        return isinstance(target, ast.Name) and (target.id in mod.executor_names
                                                 or "executor" in target.id.lower())
    if isinstance(target, ast.Call):
        return _name(target) in _THREAD_CLASSES
    return isinstance(target, ast.Name) and (target.id in mod.thread_names or "sched" in target.id.lower())


def _waited_for(stmt: ast.AST) -> set[int]:
    """id() of the ``pool.submit(...)`` calls in ``with ThreadPoolExecutor() as pool:``
    blocks (the block's end waits for them) and of what an ``await`` waits for
    (``await asyncio.to_thread(load)``, ``await asyncio.gather(...)``): no background
    work. Also of an asyncio start inside another (``asyncio.create_task(asyncio.to_thread(f))``):
    the outer one is the work reported."""
    waited: set[int] = set()
    for node in ast.walk(stmt):
        if isinstance(node, ast.Await) or (isinstance(node, ast.Call) and _name(node) in _ASYNC_STARTS):
            waited.update(id(n) for n in ast.walk(node) if n is not node)
        if isinstance(node, (ast.With, ast.AsyncWith)):
            pools = {name for name, value in _bindings(node) if _name(value) in _EXECUTOR_CLASSES}
            waited.update(id(n) for s in node.body for n in ast.walk(s)
                          if isinstance(n, ast.Call) and _name(n) == "submit"
                          and _name(getattr(n.func, "value", n)) in pools)
    return waited


def _awaited_tasks(body: Sequence[ast.AST]) -> set[int]:
    """id() of the asyncio starts bound to a name (``t = asyncio.create_task(load())``) that
    the same body awaits before any ``yield`` (``await t``, ``await asyncio.gather(t, u)``):
    done when the hook returns. Awaited after a lifespan's ``yield``, it runs while the
    worker serves."""
    nodes = [n for stmt in body for n in ast.walk(stmt)]
    served = min((n.lineno for n in nodes if isinstance(n, (ast.Yield, ast.YieldFrom))), default=None)
    awaited = {n.id for a in nodes if isinstance(a, ast.Await) and (served is None or a.lineno < served)
               for n in ast.walk(a) if isinstance(n, ast.Name)}
    return {id(value) for n in nodes for bound, value in _bindings(n)
            if bound in awaited and _name(value) in _ASYNC_STARTS}


def _thread_starts(body: Sequence[ast.AST], mod: _Module) -> Iterator[ast.Call]:
    awaited = _awaited_tasks(body)
    for stmt in body:
        waited = _waited_for(stmt) | awaited
        for n in ast.walk(stmt):
            if isinstance(n, ast.Call) and _starts_background(n, mod) and id(n) not in waited:
                yield n
            elif (isinstance(n, ast.Call) and _name(n) == "every"
                    and _name(getattr(n.func, "value", n)) == "schedule"):
                yield n


def _check_timers(mod: _Module, out: list[tuple[int, str, str]]) -> None:
    top = [s for s in mod.tree.body
           if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
           and not _is_main_guard(s)]
    for call in _thread_starts(top, mod):
        out.append((call.lineno, "SK401",
                    f"background {_started(call)} at import: every worker process runs its own copy "
                    "(N workers, N computations per interval)"))
    called_at_import = {
        n.func.id for s in top for n in ast.walk(s)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in mod.functions
    }
    for name in sorted(called_at_import):
        for call in _thread_starts(mod.functions[name].body, mod):
            out.append((call.lineno, "SK401",
                        f"background {_started(call)} by {name}(), called at import: every worker "
                        "process runs its own copy"))
    for node in ast.walk(mod.tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                node.name in _PER_WORKER_FUNCS or id(node) in mod.startup
                or any(_name(d) in _PER_WORKER_DECORATORS for d in node.decorator_list)):
            for call in _thread_starts(node.body, mod):
                out.append((call.lineno, "SK402",
                            f"background {_started(call)} in {node.name}(): once per worker (or per "
                            "app), not once per cluster"))


def _started(call: ast.Call) -> str:
    if _name(call) in ("submit", "run_in_executor"):
        return "task submitted to an executor"
    if _name(call) in ("create_task", "ensure_future", "start_soon"):
        return "asyncio task started"
    return "timer/thread started"


def _is_main_guard(stmt: ast.stmt) -> bool:
    """``if __name__ == "__main__":``: not run when a server imports the module."""
    test = stmt.test if isinstance(stmt, ast.If) else None
    if not (isinstance(test, ast.Compare) and len(test.comparators) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    left, right = test.left, test.comparators[0]
    sides = {_name(left), _const_str(left), _name(right), _const_str(right)}
    return {"__name__", "__main__"} <= sides


def _config_pairs(tree: ast.Module) -> Iterator[tuple[str, ast.AST, int]]:
    """``(KEY, value node, line)`` for settings written as ``KEY = v``, ``x["KEY"] = v``,
    ``x.update(KEY=v)`` or ``{"KEY": v}``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name) and t.id.isupper():
                    yield t.id, node.value, node.lineno
                elif isinstance(t, ast.Subscript) and _const_str(t.slice):
                    yield str(_const_str(t.slice)), node.value, node.lineno
        elif isinstance(node, ast.Call) and _name(node) in ("update", "from_mapping", "setdefault"):
            for kw in node.keywords:
                if kw.arg and kw.arg.isupper():
                    yield kw.arg, kw.value, kw.value.lineno
            if _name(node) == "setdefault" and len(node.args) == 2 and _const_str(node.args[0]):
                yield str(_const_str(node.args[0])), node.args[1], node.lineno
        elif isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                key = _const_str(k)
                if key and key.isupper() and key.startswith(("SESSION_", "STORAGES", "CACHES", "CACHE_TYPE")):
                    yield key, v, v.lineno


def _dict_get(node: ast.AST | None, key: str) -> ast.AST | None:
    if isinstance(node, ast.Dict):
        for k, v in zip(node.keys, node.values, strict=True):
            if _const_str(k) == key:
                return v
    return None


def _check_settings(tree: ast.Module, out: list[tuple[int, str, str]]) -> None:
    pairs: dict[str, tuple[ast.AST, int]] = {}
    for key, value, line in _config_pairs(tree):
        pairs.setdefault(key, (value, line))
    if "SESSION_TYPE" in pairs:
        value, line = pairs["SESSION_TYPE"]
        kind = _const_str(value)
        if kind == "filesystem":
            out.append((line, "SK201", "Flask-Session SESSION_TYPE 'filesystem': sessions are files on one "
                                       "machine, gone when it is replaced"))
        elif kind == "cachelib":
            backend = pairs.get("SESSION_CACHELIB")
            cls = _name(backend[0]) if backend else "FileSystemCache"
            if cls in ("SimpleCache", "FileSystemCache"):
                where = "one worker's memory" if cls == "SimpleCache" else "files on one machine"
                out.append((backend[1] if backend else line, "SK201",
                            f"Flask-Session cachelib {cls}: sessions live in {where}; users are logged out "
                            "by the next worker or restart"))
    caches = pairs.get("CACHES")
    if "SESSION_ENGINE" in pairs:
        value, line = pairs["SESSION_ENGINE"]
        engine = _const_str(value) or ""
        if engine.endswith(".file"):
            out.append((line, "SK202", f"SESSION_ENGINE {engine!r}: sessions are files on one machine"))
        elif engine.endswith((".cache", ".cached_db")):
            alias_node = pairs.get("SESSION_CACHE_ALIAS")
            alias = (_const_str(alias_node[0]) if alias_node else None) or "default"
            session_cache = _const_str(_dict_get(_dict_get(caches[0] if caches else None, alias), "BACKEND"))
            if session_cache is None or "locmem" in session_cache or "filebased" in session_cache:
                out.append((line, "SK202",
                            f"SESSION_ENGINE {engine!r} on cache {alias!r} "
                            f"({session_cache or 'LocMemCache, the default'}): sessions live in one process"))
    if caches is not None:
        cache_map = caches[0]
        if isinstance(cache_map, ast.Dict):
            for k, v in zip(cache_map.keys, cache_map.values, strict=True):
                cache_backend = _const_str(_dict_get(v, "BACKEND")) or ""
                if "locmem" in cache_backend.lower() or "filebased" in cache_backend.lower():
                    out.append((v.lineno, "SK304",
                                f"cache {_const_str(k)!r} uses {cache_backend.rsplit('.', 1)[-1]}: every "
                                "process (or machine) has its own, different copy"))
    for key, value, line in _config_pairs(tree):  # Flask-Caching: every Cache(config=...) of the module
        kind = (_const_str(value) or "").rsplit(".", 1)[-1].lower()
        if key == "CACHE_TYPE" and kind in ("simple", "simplecache", "filesystem", "filesystemcache"):
            out.append((line, "SK304", f"Flask-Caching CACHE_TYPE {_const_str(value)!r}: every process (or "
                                       "machine) has its own, different copy"))
    storages = pairs.get("STORAGES")
    if storages is not None:
        backend_node = _dict_get(_dict_get(storages[0], "default"), "BACKEND")
        if (_const_str(backend_node) or "").endswith("FileSystemStorage"):
            out.append((getattr(backend_node, "lineno", storages[1]), "SK103",
                        "STORAGES default is FileSystemStorage: uploads stay on one machine"))
    elif "DEFAULT_FILE_STORAGE" in pairs:
        value, line = pairs["DEFAULT_FILE_STORAGE"]
        if (_const_str(value) or "").endswith("FileSystemStorage"):
            out.append((line, "SK103",
                        "DEFAULT_FILE_STORAGE is FileSystemStorage: uploads stay on one machine"))
    elif "MEDIA_ROOT" in pairs and "INSTALLED_APPS" in pairs:
        out.append((pairs["MEDIA_ROOT"][1], "SK103",
                    "MEDIA_ROOT without STORAGES: Django's default FileSystemStorage keeps uploads on one "
                    "machine"))


def _check_local_constructors(mod: _Module, out: list[tuple[int, str, str]]) -> None:
    """``cache = SimpleCache()`` at module level; ``FileSystemStorage(...)`` anywhere."""
    for node in mod.tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and _name(node.value) in _LOCAL_CACHES
                and any(isinstance(t, ast.Name) for t in node.targets)):
            cls = _name(node.value)
            out.append((node.lineno, "SK304", f"{_LOCAL_CACHES[cls]} {cls} at module level: every process "
                                              "(or machine) has its own, different copy"))
    for n in ast.walk(mod.tree):
        if isinstance(n, ast.Call) and _name(n) == "FileSystemStorage":
            out.append((n.lineno, "SK103", "FileSystemStorage: these files stay on one machine"))
        elif isinstance(n, ast.Call) and _name(n) in ("connect", "create_engine") and n.args and (
                _const_str(n.args[0]) == ":memory:"
                or any(isinstance(a, ast.Call) and _name(a) in _TEMP_CALLS for a in ast.walk(n.args[0]))):
            out.append((n.lineno, "SK305", _SQLITE_LOCAL))
        elif _SQLITE_MEMORY_RE.match(_const_str(n) or "-"):
            out.append((getattr(n, "lineno", 0), "SK305", _SQLITE_LOCAL))


_SQLITE_LOCAL = ("SQLite database in this process's memory (or a file of this worker): every worker has "
                 "its own, lost on restart")


def _ignored(lines: Sequence[str], line: int, code: str) -> bool:
    if not 0 < line <= len(lines):
        return False
    m = _IGNORE_RE.search(lines[line - 1])
    if m is None:
        return False
    return m.group(1) is None or code in {c.strip() for c in m.group(1).split(",")}


def audit_source(source: str, path: str = "<string>") -> list[Finding]:
    """Findings for one Python source text (parsed, never run).

    :raises SyntaxError: when *source* is not valid Python.
    """
    return _findings(_Module(ast.parse(source, filename=path)), source, path)


def _findings(mod: _Module, source: str, path: str) -> list[Finding]:
    tree = mod.tree
    raw: list[tuple[int, str, str]] = []
    _check_handlers(mod, raw)
    _check_cached_queries(mod, raw)
    _check_timers(mod, raw)
    _check_settings(tree, raw)
    _check_local_constructors(mod, raw)
    lines = source.splitlines()
    found = sorted({Finding(path, line, code, msg) for line, code, msg in raw
                    if not _ignored(lines, line, code)})
    # one SK301 per container and handler: the first write is enough to point at
    seen: set[str] = set()
    unique = []
    for f in found:
        if f.code == "SK301":
            if f.message in seen:
                continue
            seen.add(f.message)
        unique.append(f)
    return unique


def audit_config(text: str, path: str) -> list[Finding]:
    """Findings for a load balancer config (nginx, HAProxy): sticky sessions."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        code_part = line.split("#", 1)[0]
        m = _STICKY_RE.match(code_part)
        if m:
            out.append(Finding(path, n, "SK501",
                               f"sticky sessions ({m.group(1).strip().rstrip(';')}): users are pinned to one "
                               "instance and lose their state when it goes away"))
    return out


def _is_config(name: str) -> bool:
    return name.endswith((".conf", ".conf.template", ".cfg")) and ("nginx" in name or "haproxy" in name
                                                                   or name.endswith(".conf")
                                                                   or name.endswith(".conf.template"))


def _read_ignore(directory: str) -> list[str]:
    try:
        with open(os.path.join(directory, ".statekitignore"), encoding="utf-8") as f:
            return [p.strip() for p in f if p.strip() and not p.lstrip().startswith("#")]
    except OSError:
        return []


def _matches(rel: str, patterns: Iterable[str]) -> bool:
    base = rel.rsplit("/", 1)[-1]
    for pat in patterns:
        pat = pat.rstrip("/")
        if fnmatch.fnmatch(rel, pat.lstrip("/")) or ("/" not in pat and fnmatch.fnmatch(base, pat)):
            return True
    return False


def _is_test(name: str) -> bool:
    return name in ("tests", "test", "conftest.py") or (
        name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))
    )


def _walk(root: str, *, include_tests: bool = False) -> Iterator[str]:
    """Files under *root*, honouring ``.statekitignore`` files and skipping virtualenvs
    (and tests, unless *include_tests*: they record calls in module-level lists on purpose)."""
    rules: list[tuple[str, list[str]]] = []  # (directory, patterns)
    for dirpath, dirnames, filenames in os.walk(root):
        rules = [(d, p) for d, p in rules if dirpath == d or dirpath.startswith(d + os.sep)]
        patterns = _read_ignore(dirpath)
        if patterns:
            rules.append((dirpath, patterns))

        def skipped(full: str, rules: list[tuple[str, list[str]]] = rules) -> bool:
            return any(_matches(os.path.relpath(full, d).replace(os.sep, "/"), p) for d, p in rules)

        dirnames[:] = sorted(
            d for d in dirnames
            if d not in _SKIP_DIRS and not d.endswith(".egg-info") and not skipped(os.path.join(dirpath, d))
            and (include_tests or not _is_test(d))
        )
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if ((name.endswith(".py") or _is_config(name)) and not skipped(full)
                    and (include_tests or not _is_test(name))):
                yield full


def audit_paths(paths: Iterable[str], *, errors: list[str] | None = None,
                include_tests: bool = False) -> list[Finding]:
    """Findings for files and directories (recursively). Files that cannot be read
    or parsed are skipped and described in *errors* (one line each; :func:`main` fails
    the run for them)."""
    found: list[Finding] = []
    modules: dict[str, tuple[_Module, str]] = {}  # path -> (module, source)
    for root in paths:
        files = [root] if os.path.isfile(root) else list(_walk(root, include_tests=include_tests))
        for path in files:
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except (OSError, UnicodeDecodeError) as e:
                if errors is not None:
                    errors.append(f"{path}: cannot read: {e}")
                continue
            if path.endswith(".py"):
                try:
                    modules[path] = (_Module(ast.parse(text, filename=path)), text)
                except SyntaxError as e:
                    if errors is not None:
                        errors.append(f"{path}:{e.lineno}: cannot parse: {e.msg}")
            else:
                found.extend(audit_config(text, path))
    _link({path: mod for path, (mod, _) in modules.items()})
    for path, (mod, text) in modules.items():
        found.extend(_findings(mod, text, path))
    return sorted(set(found))


def _module_parts(path: str) -> tuple[str, ...]:
    """A file's dotted name as the parts of its absolute path (``/app/shop/views.py`` ->
    ``("app", "shop", "views")``, a package's ``__init__.py`` its directory): which of its
    ends is the importable name depends on ``sys.path``, unknown here (see :func:`_link`)."""
    parts = os.path.splitext(os.path.abspath(path))[0].split(os.sep)
    return tuple(p for p in (parts[:-1] if parts[-1] == "__init__" else parts) if p)


def _import_map(mod: _Module, own: tuple[str, ...], is_package: bool) -> dict[str, tuple[str, ...]]:
    """Local name -> the dotted name it is bound to by the module's imports: relative ones
    complete (``from . import views`` in ``/app/shop/urls.py``: ``views`` -> ``("app", "shop",
    "views")``), absolute ones as written (``from shop.views import index``)."""
    names: dict[str, tuple[str, ...]] = {}
    for node in mod.imports:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = tuple(alias.name.split("."))
                else:
                    head = alias.name.split(".")[0]
                    names[head] = (head,)
            continue
        base: tuple[str, ...] = ()
        if node.level:
            package = own if is_package else own[:-1]
            base = package[:len(package) - (node.level - 1)]
        base += tuple(node.module.split(".")) if node.module else ()
        for alias in node.names:
            if alias.name != "*":
                names[alias.asname or alias.name] = (*base, alias.name)
    return names


def _link(modules: dict[str, _Module]) -> None:
    """Mark as handlers the functions (and ``as_view()`` classes) a module's routes name
    in another of *modules*: ``path("x/", views.index)`` in ``shop/urls.py`` makes
    ``index`` of ``shop/views.py`` a view, ``app.add_api_route("/", items.create)`` and
    ``Depends(deps.current_user)`` likewise, read through the module's imports. An
    absolute name (``shop.views``) is the module whose path ends so; of several, the ones
    nearest the importing file."""
    by_parts = {_module_parts(path): mod for path, mod in modules.items()}
    by_last: dict[str, list[tuple[str, ...]]] = {}
    for parts in by_parts:
        if parts:
            by_last.setdefault(parts[-1], []).append(parts)
    for path, mod in modules.items():
        if not (mod.registrations and mod.imports):  # a name of the module itself: _Module's
            continue
        own = _module_parts(path)
        imports = _import_map(mod, own, os.path.basename(path) == "__init__.py")
        for dotted, kind in mod.registrations:
            full = (*imports.get(dotted[0], ()), *dotted[1:])
            if dotted[0] not in imports or len(full) < 2:
                continue
            wanted, name = full[:-1], full[-1]
            found = [p for p in by_last.get(wanted[-1], []) if p[-len(wanted):] == wanted]
            if len(found) > 1:  # the nearest: most parts in common with the importing module's
                common = {p: len(os.path.commonprefix([p, own])) for p in found}
                found = [p for p in found if common[p] == max(common.values())]
            for parts in found:
                target = by_parts[parts]
                target.register([target.functions[name]] if name in target.functions else [], name, kind)


def main(argv: Sequence[str]) -> int:
    """``statekit audit [PATH ...] [--format text|json] [--select CODES] [--ignore CODES]``."""
    from .cli import PlainHelpFormatter

    parser = argparse.ArgumentParser(
        prog="statekit audit", formatter_class=PlainHelpFormatter,
        description="Find per-process state (local uploads, file/memory sessions, module-level caches, "
                    "per-worker timers, sticky sessions) without importing the code.",
        epilog="Codes: " + ", ".join(f"{c} {t}" for c, (_, t) in RULES.items()),
    )
    parser.add_argument("paths", nargs="*", default=["."], metavar="PATH",
                        help="files or directories to check (default: the current directory)")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="text, one finding a line (default), or json for tools")
    parser.add_argument("--select", default="", help="only these codes or prefixes (SK1,SK301)")
    parser.add_argument("--ignore", default="", help="skip these codes or prefixes")
    parser.add_argument("--include-tests", action="store_true",
                        help="also check tests/, test_*.py and conftest.py (skipped by default)")
    opts = parser.parse_args(list(argv))
    for p in opts.paths:
        if not os.path.exists(p):
            print(f"statekit audit: {p}: no such file or directory", file=sys.stderr)
            return 2
    select = _codes(parser, "--select", opts.select)
    ignore = _codes(parser, "--ignore", opts.ignore)
    errors: list[str] = []
    found = [
        f for f in audit_paths(opts.paths, errors=errors, include_tests=opts.include_tests)
        if (not select or f.code.startswith(tuple(select)))
        and not (ignore and f.code.startswith(tuple(ignore)))
    ]
    for e in errors:
        print(f"statekit audit: {e}", file=sys.stderr)
    if opts.format == "json":
        print(json.dumps([f.as_dict() for f in found], indent=2))
    else:
        for f in found:
            print(f.format())
        n = len(found)
        unchecked = f", {len(errors)} file{'s' if len(errors) != 1 else ''} not checked" if errors else ""
        print(f"{n} finding{'s' if n != 1 else ''}{unchecked}" + (" — see docs/migration.md" if n else ""),
              file=sys.stderr)
    return 1 if found or errors else 0


def _codes(parser: argparse.ArgumentParser, option: str, raw: str) -> list[str]:
    """The codes or prefixes of *option* (``SK1,SK301``); one that names no rule is a
    usage error (a typo would select nothing, or ignore nothing, in silence)."""
    codes = [c.strip() for c in raw.split(",") if c.strip()]
    for code in codes:
        if not any(known.startswith(code) for known in RULES):
            parser.error(f"{option}: unknown code {code!r} (codes: {', '.join(RULES)}; a prefix such as "
                         "SK3 selects a group)")
    return codes
