"""django-vcache, issue 18's async Django cache anchor, needs Python >= 3.12 (its wheels
carry a Rust driver built for 3.12+) and the project venv runs 3.11. The benchmarks
that measure it (``cache_async.py``, ``django_asgi.py``) take ``--python PATH`` to run
themselves, every contestant included, under such an interpreter: this checkout
first on the import path (``PYTHONPATH``, as for every tree the benchmarks measure)
and the ``redis-server`` this interpreter would start pinned with
``STATEKIT_REDIS_SERVER``, so both venvs measure the same server binary.

``bench/vcache-venv.sh`` builds that interpreter's venv (``/tmp/vcache-venv`` by
default, outside the repository) with the versions of this venv; ``bench/run.py``
passes ``--python`` to both benchmarks when it finds one (``$STATEKIT_VCACHE_PYTHON``,
else ``/tmp/vcache-venv/bin/python``) and says so when it does not.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import subprocess
import sys

from _trees import NOW, env_for

#: where ``bench/vcache-venv.sh`` builds the venv unless told otherwise
VENV = os.environ.get("STATEKIT_VCACHE_VENV", "/tmp/vcache-venv")  # noqa: S108 - a scratch venv, by design
HINT = f"run with --python {VENV}/bin/python (bench/vcache-venv.sh builds it)"
#: the backend's dotted path, as its README configures it
BACKEND = "django_vcache.backend.ValkeyCache"


def missing() -> str | None:
    """Why django-vcache cannot be measured in this interpreter (a line to print), or
    ``None`` when it can."""
    if sys.version_info < (3, 12):
        return (f"django-vcache: not measured: it needs Python >= 3.12 and this is "
                f"{platform.python_version()}; {HINT}")
    if importlib.util.find_spec("django_vcache") is None:
        return f"django-vcache: not measured: not installed for {sys.executable}; {HINT}"
    return None


def version() -> str:
    """The installed django-vcache's version."""
    return importlib.metadata.version("django-vcache")


def find_python() -> str | None:
    """An interpreter that can measure django-vcache (``$STATEKIT_VCACHE_PYTHON``, else
    the venv's), or ``None`` when there is none."""
    python = os.environ.get("STATEKIT_VCACHE_PYTHON") or os.path.join(VENV, "bin", "python")
    if not os.access(python, os.X_OK):
        return None
    probe = subprocess.run(  # noqa: S603 - our own probe
        [python, "-c", "import sys, django_vcache; sys.exit(sys.version_info < (3, 12))"],
        capture_output=True, check=False)
    return python if probe.returncode == 0 else None


def rerun(python: str, script: str, argv: list[str]) -> int:
    """Run *script* with *argv* (``--python`` removed) under *python*, this checkout on
    its import path and this interpreter's ``redis-server`` pinned; its exit status."""
    from statekit.embedded import find_redis_server

    rest: list[str] = []
    skip = False
    for arg in argv:
        if skip or arg.startswith("--python="):
            skip = False
            continue
        if arg == "--python":
            skip = True
            continue
        rest.append(arg)
    env = env_for(NOW)
    env.setdefault("STATEKIT_REDIS_SERVER", find_redis_server().path)
    print(f"{os.path.basename(script)}: running under {python} (STATEKIT_REDIS_SERVER="
          f"{env['STATEKIT_REDIS_SERVER']})", flush=True)
    return subprocess.call([python, script, *rest], env=env)  # noqa: S603 - our own command line
