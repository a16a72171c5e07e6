"""The README's ``pip wheel`` line builds the wheels the suite installs: the same four
projects (statekit and the three adapters), without their dependencies, into ``dist/``.
The suite's own build (``test_packaging._pip_wheel``) adds only what keeps it off the
network (``--no-build-isolation``: the installed hatchling) and quiet."""

from __future__ import annotations

import shlex
from pathlib import Path

from test_user_path import code_blocks, readme_section

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_wheel_line_builds_what_the_suite_installs() -> None:
    lines = [line for block in code_blocks(readme_section("Install"), "shell")
             for line in block.splitlines() if line.startswith("pip wheel")]
    assert len(lines) == 1, lines
    args = shlex.split(lines[0], comments=True)
    assert args[:2] == ["pip", "wheel"] and "--no-deps" in args, args
    assert args[args.index("-w") + 1] == "dist", args
    projects = [a for a in args[2:] if not a.startswith("-") and a != "dist"]
    assert projects == [".", "./adapters/flask-statekit", "./adapters/django-statekit",
                        "./adapters/starlette-statekit"], projects
    names = set()
    for project in projects:
        pyproject = (ROOT / project / "pyproject.toml").read_text()
        names.add(pyproject.split('name = "', 1)[1].split('"', 1)[0])
    # the projects test_packaging.run_wheels builds for every user-path test
    assert names == {"statekit", "flask-statekit", "django-statekit", "starlette-statekit"}, names
