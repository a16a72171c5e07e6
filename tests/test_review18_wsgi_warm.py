"""The readiness checks run once as a WSGI worker of ``statekit serve`` starts (before
it reports ready), as an ASGI worker's do in its lifespan startup
(``test_review18_lifecycle_warm``): the first ``/readyz`` finds the checks' clients
built. Before, a Flask or Django app under ``statekit serve`` built them on the first
probe (60-240 ms measured, more than the budget for a slow first build). A real
``statekit serve`` on gthread workers, a real Redis; every process started here is
stopped here, by pid.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from test_lifecycle_helpers import ServeProcess, request, wait_until

#: a Flask app whose readiness has a check "client" whose first run takes longer than the
#: budget, as boto3's first S3 client does under load
FLASK_APP = textwrap.dedent(
    """
    import time
    from flask import Flask
    from flask_statekit import StateKit

    app = Flask(__name__)
    app.config["STATEKIT_SECRET_KEYS"] = ["test-key"]
    StateKit(app)

    first = []

    def slow_first_build(timeout):
        if not first:
            time.sleep(3 * timeout)  # building the client
            first.append(True)

    app.extensions["statekit"].lifecycle.add_check("client", slow_first_build)
    """
)


@pytest.mark.redis
@pytest.mark.gunicorn
def test_the_first_probe_of_a_wsgi_worker_finds_the_clients_built(tmp_path: Path, redis_url: str) -> None:
    env = {"STATEKIT_REDIS_URL": redis_url, "STATEKIT_BLOBS_ENABLED": "0", "STATEKIT_READY_BUDGET": "1"}
    with ServeProcess(tmp_path, "--workers", "1", app_source=FLASK_APP, env=env) as srv:
        wait_until(lambda: len(srv.workers()) >= 1 and "ready" in srv.log(), 60, "the worker to report ready")
        status, _, body = request(srv.port, "/readyz", timeout=30)
        assert status == 200, body  # "client: no answer within 1s" before
        assert json.loads(body)["checks"] == {"redis": "ok", "client": "ok"}
