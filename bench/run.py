"""Run every benchmark in bench/ in turn (``make bench``).

Each benchmark starts its own private servers through :mod:`statekit.embedded`,
measures statekit and its anchors side by side in one run, and prints ratios.
``python bench/run.py cache sessions`` runs only those.

* The header names the commit measured (``+dirty`` when statekit/ or adapters/
  differ from it), and every section prints the load average when it starts and
  ends, its wall time and the CPU time its processes used.
* ``--busy`` makes the machine busy for the whole run: N processes (N = the CPU
  count, or ``--busy N``) that only burn CPU (no I/O, no network), each ending by
  itself after ``--busy-limit`` seconds at most and stopped by PID when the run
  ends. A client that spins for replies wins on an idle machine and loses here.
* ``--before REV`` (default 49db0e6, main before issue 17; ``--before none`` to
  skip) checks REV out once with ``git worktree`` (removed at the end) and has the
  sessions, blobs and broadcast benchmarks measure it interleaved with this tree.
* django-vcache (issue 18's async Django anchor) needs Python >= 3.12: when one with
  django-vcache is found (``$STATEKIT_VCACHE_PYTHON``, else ``/tmp/vcache-venv/bin/python``;
  ``bench/vcache-venv.sh`` builds it), cache_async and django_asgi run under it
  (``--python``), django-vcache beside the others; otherwise they run here and say
  it was skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import _vcache  # noqa: E402
from _trees import BEFORE, NOW, before_tree, commit, env_for  # noqa: E402

BENCHES = ["transport", "cache", "sessions", "blobs", "broadcast", "scaling", "lifecycle",
           # asyncio and ASGI (issue 18): the async cache, FastAPI sessions, a Django ASGI view
           "cache_async", "sessions_asgi", "django_asgi"]
#: benchmarks that take ``--before PATH``
COMPARED = {"sessions", "blobs", "broadcast"}
#: benchmarks with a django-vcache contestant, which needs Python >= 3.12 (``--python``)
VCACHE = {"cache_async", "django_asgi"}

BURN = ("import sys, time\nend = time.monotonic() + float(sys.argv[1])\n"
        "while time.monotonic() < end:\n    pass\n")


@contextlib.contextmanager
def burners(count: int, limit: float) -> Iterator[list[int]]:
    """*count* CPU-burning processes for the duration, stopped by PID afterwards
    (each also ends by itself after *limit* seconds)."""
    procs = [subprocess.Popen([sys.executable, "-c", BURN, str(limit)])  # noqa: S603 - our own code
             for _ in range(count)]
    try:
        yield [p.pid for p in procs]
    finally:
        stop(procs)


def stop(procs: Sequence[subprocess.Popen[Any]]) -> None:
    """Terminate the processes this run started (by their PIDs) and reap them
    (killed after 10 s); the benchmarks stop their servers with it too."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(chosen: list[str], before: Path | None, extra: dict[str, list[str]]) -> list[str]:
    here = Path(__file__).parent
    failed = []
    with_vcache = sorted(VCACHE.intersection(chosen))
    vcache_python = _vcache.find_python() if with_vcache else None
    if vcache_python:
        print(f"django-vcache: {', '.join(with_vcache)} run under {vcache_python}", flush=True)
    elif with_vcache:
        print(f"django-vcache: skipped, no Python >= 3.12 with it found ($STATEKIT_VCACHE_PYTHON, "
              f"{_vcache.VENV}/bin/python; sh bench/vcache-venv.sh builds it)", flush=True)
    for name in chosen:
        script = here / f"{name}.py"
        if not script.exists():
            print(f"== {name}: no bench/{name}.py", flush=True)
            failed.append(name)
            continue
        args = list(extra.get(name, []))
        if before is not None and name in COMPARED:
            args += ["--before", str(before)]
        if vcache_python and name in VCACHE:
            args += ["--python", vcache_python]
        command = " ".join(["bench/" + script.name, *args])
        print(f"\n== {name}: {command}  (load average {_load()} at start, "
              f"{time.strftime('%H:%M:%S', time.gmtime())} UTC)", flush=True)
        t0, cpu0 = time.perf_counter(), _children_cpu()
        status = subprocess.call([sys.executable, str(script), *args], env=env_for(NOW))  # noqa: S603
        print(f"== {name}: exit {status} in {time.perf_counter() - t0:.1f}s, "
              f"{_children_cpu() - cpu0:.1f}s CPU of its processes; load average {_load()} at end",
              flush=True)
        if status:
            failed.append(name)
    return failed


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("benches", nargs="*", metavar="BENCH",
                    help=f"bench/BENCH.py (default: {', '.join(BENCHES)})")
    ap.add_argument("--busy", nargs="?", type=int, const=os.cpu_count() or 1, default=0, metavar="N",
                    help="run N CPU-burning processes meanwhile (default N: the CPU count)")
    ap.add_argument("--busy-limit", type=float, default=3600, help="seconds a burner lives at most")
    ap.add_argument("--before", default=BEFORE, metavar="REV|PATH|none",
                    help=f"the tree sessions, blobs and broadcast are compared with (default {BEFORE})")
    ap.add_argument("--quick", action="store_true", help="blobs without the 1 GiB upload to S3")
    args = ap.parse_args(argv)
    chosen = args.benches or BENCHES
    known = sorted(p.stem for p in Path(__file__).parent.glob("[a-z]*.py") if p.stem != "run")
    unknown = [b for b in chosen if b not in known]
    if unknown:
        ap.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(known)}")
    extra = {"blobs": ["--quick"]} if args.quick else {}
    import redis

    print(f"statekit {commit()} ({NOW}); {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC; "
          f"{os.cpu_count()} CPUs, load average {_load()}; Python {platform.python_version()}, "
          f"redis-py {redis.__version__}, hiredis {redis.utils.HIREDIS_AVAILABLE}", flush=True)
    imported = subprocess.run([sys.executable, "-c", "import statekit; print(statekit.__file__)"],  # noqa: S603
                              env=env_for(NOW), capture_output=True, text=True, check=True,
                              cwd=tempfile.gettempdir()).stdout.strip()
    print(f"the benchmarks import statekit from {imported}", flush=True)
    with contextlib.ExitStack() as stack:
        before = None
        if args.before.lower() != "none" and COMPARED.intersection(chosen):
            before = stack.enter_context(before_tree(args.before))
            print(f"before: {commit(before)} checked out at {before}", flush=True)
        if args.busy:
            pids = stack.enter_context(burners(args.busy, args.busy_limit))
            print(f"busy: {args.busy} CPU-burning processes (pids {', '.join(map(str, pids))}) "
                  f"for the whole run", flush=True)
            time.sleep(2)
        t0 = time.perf_counter()
        failed = run(chosen, before, extra)
        print(f"\nall: {time.perf_counter() - t0:.0f}s; load average {_load()}", flush=True)
    if failed:
        print(f"failed or missing: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
