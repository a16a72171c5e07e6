"""The migrated demo (examples/flask_app) behind a middleware that behaves badly but
legally (tests/test_phoenix_review.py): during the first 0.6 s of every 3 s the "database"
is out and every request answers 503 with Retry-After -- a session write even after it
was applied (its outcome unknown to the client) -- and one request in four is slow (0.3 s).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from typing import Any

from examples.flask_app.wsgi import app as demo

_count = itertools.count()


def _outage() -> bool:
    return time.time() % 3.0 < 0.6


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if next(_count) % 4 == 0:
        time.sleep(0.3)
    if _outage() and environ.get("PATH_INFO") != "/healthz":
        if environ.get("PATH_INFO") == "/api/session" and environ.get("REQUEST_METHOD") == "POST":
            applied = demo(environ, lambda *a: None)  # applied, then the reply says 503
            for _ in applied:
                pass
            getattr(applied, "close", lambda: None)()
        start_response("503 Service Unavailable", [("Retry-After", "1"), ("Content-Type", "text/plain")])
        return [b"outage\n"]
    return demo(environ, start_response)  # type: ignore[no-any-return]
