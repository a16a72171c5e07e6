"""statekit serve's private metrics directory is removed on exit even when the
master's exporter thread flushes at that moment.

The flake: ``test_metrics.py::test_serve_usr2_new_master_gets_its_own_dir`` once
found the new master's directory after the master had exited. The master removes it
itself (``on_exit`` -> ``metrics._remove_private_dir``, after its workers are reaped),
but its ``statekit-metrics`` thread flushes once a second, unsynchronised with the
removal: a flush that found the directory, then ran while ``shutil.rmtree`` was
removing it, made ``<dir>/statekit`` again (``os.makedirs``), and the directory
stayed on the disk (rmtree's last ``rmdir`` failed, ignored).
"""

from __future__ import annotations

import os
import subprocess
import sys

# The exporter's tick is made to come exactly while rmtree removes the directory:
# right after rmtree removed the ``statekit`` subdirectory, before the directory
# itself, a thread flushes (as the statekit-metrics thread does once a second).
_RACE = """
import os, threading
import statekit.metrics as m

m._exporter.interval = 3600.0  # the thread sleeps: the flushes below are the test's
c = m.Counters("jobs", "t-race", names=("runs",))
c.incr("runs")
path = m._private_dir()
m.flush()
assert os.path.isfile(os.path.join(path, "statekit", f"counter_{os.getpid()}.db"))

real_rmdir = os.rmdir
ticks = []

def rmdir(p, *args, **kwargs):
    real_rmdir(p, *args, **kwargs)
    if os.path.basename(os.fsdecode(p)) == "statekit":
        t = threading.Thread(target=m.flush)
        t.start()
        t.join(20)
        ticks.append(t.is_alive())

os.rmdir = rmdir
m._remove_private_dir(path)
os.rmdir = real_rmdir
print(ticks, os.path.exists(path), os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
__import__("shutil").rmtree(path, ignore_errors=True)  # what a failure left
"""


def test_a_flush_during_the_removal_does_not_leave_the_directory() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    out = subprocess.run([sys.executable, "-c", _RACE], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    # the flush ran (not stuck behind the removal), the directory is gone, the variable unset
    assert out.stdout.split() == ["[False]", "False", "None"], out.stdout + out.stderr
    assert "cannot write" not in out.stderr
