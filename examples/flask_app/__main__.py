"""``python -m examples.flask_app``: the demo on four workers under ``statekit serve``.

``make demo`` runs it inside ``statekit dev --blobs-dir examples/flask_app/instance/blobs``,
which starts a private Redis and sets ``STATEKIT_REDIS_URL`` and ``STATEKIT_BLOBS_URL``.
The photos are files in ``instance/blobs``, next to the demo's SQLite database
(``instance/demo.sqlite3``) that refers to them, so both survive a restart of the demo
(the in-memory S3 endpoint ``statekit dev`` starts without ``--blobs-dir`` would
forget them); delete ``instance/`` to start afresh. Extra arguments go to ``statekit
serve`` (e.g. ``--bind 0.0.0.0:8000``).

It *execs* ``python -m statekit serve ...``: the master is this process, and ``statekit
reload`` (run with no arguments from this directory) finds its pid in the pid file under
``.statekit/``.
"""

from __future__ import annotations

import os
import sys

from statekit.embedded import bind_in_use


def main(argv: list[str]) -> int:
    missing = [v for v in ("STATEKIT_REDIS_URL", "STATEKIT_BLOBS_URL") if not os.environ.get(v)]
    if missing:
        print(f"examples.flask_app: {' and '.join(missing)} not set; run `make demo` or "
              "`statekit dev --blobs-dir examples/flask_app/instance/blobs -- python -m examples.flask_app`",
              file=sys.stderr)
        return 2
    bind = os.environ.get("STATEKIT_BIND", "127.0.0.1:8000")
    if "--bind" not in argv:
        if bind_in_use(bind):  # said here in one line, not after gunicorn's retries
            print(f"examples.flask_app: {bind} is in use (another server listens there); serve the "
                  "demo elsewhere with `make demo STATEKIT_BIND=127.0.0.1:8001`", file=sys.stderr)
            return 2
        print(f"statekit demo: open http://{bind}/ and reload it a few times", flush=True)
    args = ["serve", "examples.flask_app.wsgi:app", "--workers", "4",
            "--broadcaster", "examples.flask_app.jobs:broadcaster"]
    if "--bind" not in argv:
        args += ["--bind", bind]
    os.execv(sys.executable, [sys.executable, "-m", "statekit", *args, *argv])  # noqa: S606


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
