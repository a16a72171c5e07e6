"""A worker told to stop by the master while it still imports the app raised
SystemExit in whatever frame the signal interrupted. Where that frame swallowed it (a
redis-py connection's ``__del__`` run by a garbage collection: "Exception ignored in
AbstractConnection.__del__ ... SystemExit: 0"), the worker finished loading, reported
ready and served on until the master's SIGKILL at the graceful timeout (25 s; seen in
test_user_path's serve + reload + SIGTERM under load). Now the process ends where the
signal lands: nothing was served yet, so nothing is left to finish."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    from statekit.gunicorn import StatekitThreadWorker
    from statekit.lifecycle import get_drain_state

    state = get_drain_state()
    state.stop_workers()  # the master told the workers to stop
    worker = object.__new__(StatekitThreadWorker)  # as gunicorn made it, before load_wsgi()
    worker.alive = True

    class Finalized:
        def __del__(self):
            worker.handle_exit(15, None)  # the SIGTERM lands inside a finalizer

    Finalized()
    print("still loading, then serving", flush=True)
""")


def test_a_stop_while_the_app_loads_ends_the_worker_even_inside_a_finalizer() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,  # noqa: S603
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "still loading" not in out.stdout  # before: the exit was swallowed and it went on
    assert "Exception ignored" not in out.stderr and "Traceback" not in out.stderr, out.stderr
