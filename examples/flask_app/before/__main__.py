"""``python -m examples.flask_app.before``: the stateful app, the classic way
(plain gunicorn, four workers, port 8001). Log in, reload a few times, and watch."""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    from gunicorn.app.wsgiapp import run

    bind = os.environ.get("BIND", "127.0.0.1:8001")
    print(f"stateful demo: open http://{bind}/ and reload it a few times", flush=True)
    sys.argv = ["gunicorn", "--workers", "4", "--bind", bind, *argv, "examples.flask_app.before.app:app"]
    run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
