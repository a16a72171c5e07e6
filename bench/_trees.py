"""Source trees to measure side by side: this checkout ("now") and an older commit
("before", a ``git worktree``), each run in its own subprocesses with its own
``PYTHONPATH`` (the same venv, the same servers).

``BEFORE`` is main before the one-Redis-layer redesign (issue 17). A bench given
``--before REV`` (or ``--before PATH`` of a ready checkout) measures both trees
interleaved in one run and prints now / before.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: main before the redesign of issue 17
BEFORE = "49db0e6"
#: the checkout the bench scripts belong to
NOW = Path(__file__).resolve().parents[1]


def pythonpath(tree: Path) -> str:
    """The ``PYTHONPATH`` that imports statekit and both adapters from *tree*."""
    return os.pathsep.join(str(p) for p in (
        tree, tree / "adapters" / "flask-statekit", tree / "adapters" / "django-statekit"))


def env_for(tree: Path, **extra: str) -> dict[str, str]:
    """This process's environment with *tree* first on the import path."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = pythonpath(tree)
    return env


def commit(tree: Path = NOW) -> str:
    """*tree*'s commit, with ``+dirty`` when files under statekit/ or adapters/ differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True,  # noqa: S603,S607
                              check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "statekit", "adapters")
    return head + ("+dirty" if dirty else "")


@contextlib.contextmanager
def before_tree(spec: str) -> Iterator[Path]:
    """A checkout of *spec*: an existing directory as it is, or a commit checked out
    with ``git worktree add`` into a temporary directory and removed afterwards."""
    if os.path.isdir(spec):
        yield Path(spec).resolve()
        return
    path = Path(tempfile.mkdtemp(prefix="bench-before-")) / "tree"
    subprocess.run(["git", "-C", str(NOW), "worktree", "add", "--detach", "--quiet", str(path), spec],  # noqa: S603,S607
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(NOW), "worktree", "remove", "--force", str(path)],  # noqa: S603,S607
                       check=False)
        with contextlib.suppress(OSError):
            path.parent.rmdir()


def run_json(script: Path, tree: Path, args: list[str], timeout: float = 900) -> dict[str, float]:
    """Run ``script --json -- args`` with *tree* on the import path and return the JSON
    object its last output line holds (its other output goes to stderr)."""
    import json

    out = subprocess.run([sys.executable, str(script), *args, "--json"], env=env_for(tree),  # noqa: S603
                         capture_output=True, text=True, timeout=timeout, check=False,
                         cwd=tempfile.gettempdir())
    if out.returncode:
        raise RuntimeError(f"{script.name} on {tree} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def alternate(script: Path, before: Path, args: list[str], pairs: int
              ) -> list[tuple[dict[str, float], dict[str, float]]]:
    """*pairs* runs of *script* on each tree, alternating (before, now, now, before,
    ...) so a drift of the machine's speed hits both alike: ``[(now, before), ...]``."""
    out = []
    for i in range(pairs):
        got: dict[Path, dict[str, float]] = {}
        for tree in (before, NOW) if i % 2 == 0 else (NOW, before):
            got[tree] = run_json(script, tree, args)
        out.append((got[NOW], got[before]))
    return out


def print_pairs(pairs: list[tuple[dict[str, float], dict[str, float]]], fields: list[tuple[str, str, str]]
                ) -> dict[str, float]:
    """Print each field's value per run (now / before) and the median of the pairs'
    ratios; *fields* are (key, label, unit). Returns the median ratios by key."""
    import statistics

    ratios = {}
    for key, label, unit in fields:
        now = " ".join(f"{n[key]:.3g}" for n, _ in pairs)
        old = " ".join(f"{b[key]:.3g}" for _, b in pairs)
        ratio = statistics.median(n[key] / b[key] for n, b in pairs)
        ratios[key] = ratio
        print(f"  {label:<34} now {now:<22} before {old:<22} {unit:<6} now/before {ratio:.2f}x")
    return ratios
