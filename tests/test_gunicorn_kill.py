"""SIGKILLed workers under concurrent load, straight to ``statekit serve``: a killed
worker loses only the requests it was executing, and the master's log counts them.

Loopback only; every process is started and stopped here, and only workers of the
master started here are killed (by PID). Each run is bounded in time and count.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from pathlib import Path

import pytest
from test_lifecycle_helpers import Load, ServeProcess

pytestmark = pytest.mark.gunicorn

DIED = re.compile(r"statekit: worker (\d+) died with (\d+) requests in flight")
THREADS = 4  # statekit serve's default threads per worker


def kill_workers_under_load(tmp_path: Path, *, clients: int, kills: int,
                            seed: int) -> tuple[Load, list[int], str]:
    """Run *clients* loopback clients against 2 workers, SIGKILL a worker every 1-2 s
    *kills* times; return the load, the pids killed and the master's log."""
    rng = random.Random(seed)
    killed: list[int] = []
    with ServeProcess(tmp_path, "--workers", "2") as srv:
        srv.wait_ready(2)
        with Load(srv.port, threads=clients, path="/sleep/0.01", post_every=0) as load:
            time.sleep(1)
            while len(killed) < kills:
                time.sleep(rng.uniform(1, 2))
                workers = srv.workers()
                if len(workers) == 2:  # both up: the other one serves meanwhile
                    victim = rng.choice(workers)
                    os.kill(victim, signal.SIGKILL)
                    killed.append(victim)
            time.sleep(1)
        log = srv.log()
    return load, killed, log


def test_sigkilled_workers_lose_only_the_requests_they_were_executing(tmp_path: Path) -> None:
    load, killed, log = kill_workers_under_load(tmp_path, clients=50, kills=5, seed=15)
    died = {int(pid): int(n) for pid, n in DIED.findall(log)}
    reported = sum(died.values())
    print(f"kills={len(killed)} requests={load.total} failed={len(load.failures)} {dict(load.reasons)} "
          f"master-reported in flight at the kills={reported} {sorted(died.values())}")
    assert set(killed) <= set(died), log  # every kill has its line
    # a worker holds no more requests than it has threads to execute them; with
    # 50 clients on 8 threads, eager accepting left ~20 queued in each worker
    assert all(n <= THREADS for n in died.values()), died
    assert load.ok > 200
    assert len(load.failures) <= reported, (load.reasons, died)


@pytest.mark.slow
def test_sigkilled_workers_soak(tmp_path: Path) -> None:
    load, killed, log = kill_workers_under_load(tmp_path, clients=100, kills=20, seed=16)
    died = {int(pid): int(n) for pid, n in DIED.findall(log)}
    print(f"kills={len(killed)} requests={load.total} failed={len(load.failures)} {dict(load.reasons)} "
          f"master-reported={sum(died.values())}")
    assert set(killed) <= set(died), log
    assert all(n <= THREADS for n in died.values()), died
    assert len(load.failures) <= sum(died.values()), (load.reasons, died)
