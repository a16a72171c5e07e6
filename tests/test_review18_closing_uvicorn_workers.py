"""``uvicorn --workers N`` replaces a worker with SIGTERM while the others serve
(SIGHUP's rolling restart, SIGTTOU): that worker is left to uvicorn, which stops it
accepting at once, as before b669c3e.

b669c3e's drain on SIGTERM under plain uvicorn applied to each of those workers too:
on a SIGHUP restart of ``uvicorn --workers 2`` the old worker kept accepting on the
shared socket for STATEKIT_PRE_STOP_DELAY seconds and answered new requests and
probes 503 (measured, delay 3 s, ~12 s of requests: 64 of 537 requests and 96 of 537
probes 503; at b669c3e~1 none), while its siblings could have served them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

from statekit.embedded import free_port

APP = textwrap.dedent("""
    from statekit.asgi import LifecycleMiddleware
    from statekit.lifecycle import Lifecycle

    async def inner(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app = LifecycleMiddleware(inner, Lifecycle())
""")


def test_a_worker_replaced_by_uvicorns_supervisor_does_not_drain(tmp_path: Path) -> None:
    (tmp_path / "closing_workers_app.py").write_text(APP)
    port = free_port()
    env = {**os.environ, "STATEKIT_PRE_STOP_DELAY": "30", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "closing_workers_app:app", "--workers", "2", "--port", str(port),
         "--timeout-worker-healthcheck", "60"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    changed = threading.Condition()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with changed:
                lines.append(line)
                changed.notify_all()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def wait_for(pattern: str, timeout: float, what: str) -> list[str]:
        deadline = time.monotonic() + timeout
        with changed:
            while True:
                found = [m.group(1) for m in map(re.compile(pattern).search, lines) if m]
                if found:
                    return found
                left = deadline - time.monotonic()
                assert left > 0, f"timed out waiting for {what}; output:\n{''.join(lines)[-3000:]}"
                changed.wait(left)

    try:
        deadline = time.monotonic() + 90
        while True:  # both workers started
            with changed:
                started = re.findall(r"Started server process \[(\d+)\]", "".join(lines))
            if len(started) >= 2:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
            assert time.monotonic() < deadline, f"uvicorn did not start; output:\n{''.join(lines)[-3000:]}"
            time.sleep(0.2)
        old = started[0]
        proc.send_signal(signal.SIGHUP)
        # the old worker, told to stop (SIGTERM) once its successor is ready, ends now,
        # not after the 30 s pre-stop delay
        wait_for(rf"(Finished server process \[{old}\])", 25, f"worker {old} to finish within 25 s")
        with changed:
            output = "".join(lines)
        assert "statekit: draining" not in output, output[-3000:]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        reader.join(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()
