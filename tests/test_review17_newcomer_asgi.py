"""A FastAPI newcomer's path through docs/starlette.md (review 17, h5).

The guide's blocks run in one namespace by ``tests/test_docs.py``; its Testing section
is code a user copies into their own project and runs with ``pytest``. Here it is
written out as printed (the quick start as the app, ``main.py``), with nothing of
this checkout's test setup, and run by ``pytest`` in a subprocess: its fixtures come
from statekit's pytest plugin (its private Redis and S3 endpoint), as they would in a
user's project. Before this review the section held one ``async def`` test of an
``app`` it never made: anyio's plugin refuses an unmarked ``async def`` test, and a
module-level ``StateKit(app)`` imported without ``STATEKIT_REDIS_URL`` fails at
collection.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "starlette.md"


def section(heading: str) -> str:
    text = GUIDE.read_text()
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, f"docs/starlette.md has no '## {heading}' section"
    return m.group(1)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, re.S | re.M)


def files_of(blocks: list[str]) -> dict[str, str]:
    """The blocks whose first line names their file (``# conftest.py, beside ...``)."""
    named = {}
    for block in blocks:
        m = re.match(r"# ([\w/]+\.py)\b", block)
        if m:
            named[m.group(1)] = block
    return named


@pytest.mark.redis
@pytest.mark.s3
def test_the_testing_section_runs_as_a_users_test_suite(tmp_path: Path) -> None:
    files = files_of(python_blocks(section("Testing")))
    assert {"conftest.py", "tests/test_app.py"} <= set(files), (
        f"the Testing section names no conftest.py and tests/test_app.py blocks: {sorted(files)}")
    (tmp_path / "main.py").write_text(python_blocks(section("Quick start"))[0])
    for name, code in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(code)
    # the user's shell: no statekit setting, nothing of this checkout on the path; the
    # pytest script (not python -m pytest, which would put the project on sys.path)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("STATEKIT_", "PYTEST_", "PYTHON")) and k != "SECRET_KEY"}
    pytest_script = Path(sys.executable).with_name("pytest")
    proc = subprocess.run(  # noqa: S603
        [str(pytest_script), "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert re.search(r"^\d+ passed", output.splitlines()[-1]), output
    assert "skipped" not in output.splitlines()[-1], output
