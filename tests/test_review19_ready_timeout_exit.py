"""``statekit serve``'s exit-status rule (f5f9cf4: 2 for an option or variable refused)
holds for ``STATEKIT_READY_TIMEOUT`` too: it was read after the block that marks usage
errors, so a bad value exited 1 while a bad ``STATEKIT_PRE_STOP_DELAY`` exited 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("variable", ["STATEKIT_READY_TIMEOUT", "STATEKIT_PRE_STOP_DELAY"])
def test_a_refused_seconds_variable_exits_2(variable: str) -> None:
    env = {**os.environ, variable: "nan"}
    done = subprocess.run([sys.executable, "-m", "statekit", "serve", "nosuchmodule:app"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert variable in done.stderr
