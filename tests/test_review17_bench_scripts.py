"""Every benchmark script ``bench/run.py`` runs starts: ``--help`` imports it (and what it
imports from its siblings) and prints its usage. A refactor of ``bench/sessions.py``
renamed a helper ``bench/sessions_asgi.py`` imported, and ``make bench`` lost its ASGI
sessions and Django ASGI sections (``ImportError``) with every test green."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_bench_script_starts(script: str) -> None:
    done = subprocess.run([sys.executable, script, "--help"], cwd=BENCH, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "usage" in done.stdout.lower(), (done.stdout[-2000:], done.stderr[-2000:])
