"""What keeping in-place changes costs a permanent Flask session (review 13).

Flask's test client, no HTTP server, a private Redis. A permanent session holds
Flask-Login's keys and a cart of 20 small dicts; ``GET /read`` reads the user id and
the cart. Two apps, interleaved in rounds:

* ``refresh on``: ``SESSION_REFRESH_EACH_REQUEST`` (Flask's default): every key the
  request read is compared with what it loaded at save, so ``session["cart"].append(x)``
  is kept, as Flask and Flask-Session keep it;
* ``refresh off``: only the keys the request assigned are compared.

Both make the same Redis calls (the load; the TTL refresh is at most once an hour
here): the difference is the comparison's CPU. Printed: the median over rounds of
CPU µs per request (this process), with the load average. Run::

    .venv/bin/python adapters/flask-statekit/bench/permanent_session_read.py [--requests 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from flask import Flask, session

from flask_statekit import StateKit


def make_app(url: str, refresh: bool) -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="bench-" + "k" * 32, STATEKIT_SESSION_URL=url,  # noqa: S106
                      STATEKIT_CACHE_ENABLED=False, STATEKIT_BROADCAST_ENABLED=False,
                      SESSION_REFRESH_EACH_REQUEST=refresh, STATEKIT_SESSION_REFRESH_INTERVAL=3600)
    StateKit(app)

    @app.post("/start")
    def start() -> Any:
        session.permanent = True
        session.update({"_user_id": "42", "_fresh": True, "_id": "f" * 128,
                        "cart": [{"sku": i, "n": 1} for i in range(20)]})
        return "ok"

    @app.get("/read")
    def read() -> Any:
        return f'{session.get("_user_id")} {len(session["cart"])}'

    return app


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000, help="requests per app and round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)

    from statekit.embedded import RedisServer

    with RedisServer() as srv:
        clients = {}
        for refresh in (True, False):
            client = make_app(srv.url, refresh).test_client()
            client.post("/start")
            clients[refresh] = client
        cpu: dict[bool, list[float]] = {True: [], False: []}
        for r in range(args.rounds + 1):  # the first round warms up
            for refresh, client in clients.items():
                c0 = time.process_time()
                for _ in range(args.requests):
                    if client.get("/read").text != "42 20":
                        raise RuntimeError("unexpected answer")
                if r:
                    cpu[refresh].append((time.process_time() - c0) / args.requests * 1e6)
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    on, off = statistics.median(cpu[True]), statistics.median(cpu[False])
    print(f"requests={args.requests} rounds={args.rounds} load={load}")
    print(f"refresh on {on:.1f} µs CPU/request, refresh off {off:.1f}: {on - off:+.1f} µs ({on / off:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
