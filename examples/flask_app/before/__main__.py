"""``python -m examples.flask_app.before``: the stateful app, the classic way
(plain gunicorn, four workers, port 8001). Log in, reload a few times, and watch.

It keeps its sessions with Flask-Session, which statekit does not install: ``pip
install Flask-Session`` first (this says so, rather than four workers' tracebacks)."""

from __future__ import annotations

import importlib.util
import os
import sys


def main(argv: list[str]) -> int:
    from gunicorn.app.wsgiapp import run

    if importlib.util.find_spec("flask_session") is None:
        print("examples.flask_app.before keeps its sessions with Flask-Session: pip install Flask-Session",
              file=sys.stderr)
        return 2

    bind = os.environ.get("BIND", "127.0.0.1:8001")
    print(f"stateful demo: open http://{bind}/ and reload it a few times", flush=True)
    sys.argv = ["gunicorn", "--workers", "4", "--bind", bind, *argv, "examples.flask_app.before.app:app"]
    run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
