"""Run every benchmark in bench/ in turn (``make bench``).

Each benchmark starts its own private servers through :mod:`statekit.embedded`,
measures statekit and its anchors side by side in one run, and prints ratios.
``python bench/run.py cache sessions`` runs only those.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCHES = ["cache", "sessions", "blobs", "broadcast", "lifecycle"]


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    chosen = argv or BENCHES
    failed = []
    for name in chosen:
        script = here / f"{name}.py"
        if not script.exists():
            print(f"== {name}: no bench/{name}.py", flush=True)
            failed.append(name)
            continue
        print(f"\n== {name} ({script})", flush=True)
        t0 = time.perf_counter()
        status = subprocess.call([sys.executable, str(script)])
        print(f"== {name}: exit {status} in {time.perf_counter() - t0:.1f}s", flush=True)
        if status:
            failed.append(name)
    if failed:
        print(f"\nfailed or missing: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
