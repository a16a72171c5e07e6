"""STATEKIT_PRE_STOP_DELAY is held to the same bounds by each of its readers.

``statekit serve`` and the gunicorn hooks (``statekit.gunicorn._seconds``) refuse a
delay of a day or more at start; the plain-uvicorn drain (``Lifecycle``, b669c3e) took
any finite number, so ``uvicorn app:app`` with STATEKIT_PRE_STOP_DELAY=90000 kept
serving the drain for 25 hours after SIGTERM where ``statekit serve`` refused to start.
"""

from __future__ import annotations

import pytest

from statekit.errors import ConfigError
from statekit.gunicorn import _seconds
from statekit.lifecycle import Lifecycle

NAME = "STATEKIT_PRE_STOP_DELAY"


@pytest.mark.parametrize("raw", ["90000", "1e300", "86401"])
def test_a_delay_serve_refuses_is_refused_under_plain_uvicorn(
        monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    with pytest.raises(ConfigError):
        _seconds(raw, NAME)  # what statekit serve and the hooks say
    monkeypatch.setenv(NAME, raw)
    with pytest.raises(ConfigError, match=NAME):
        Lifecycle()
    with pytest.raises(ConfigError, match="pre_stop_delay"):
        Lifecycle(pre_stop_delay=float(raw))


@pytest.mark.parametrize("raw", ["0", "2", "8.5", "86399"])
def test_a_delay_serve_takes_is_taken(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    assert _seconds(raw, NAME) == float(raw)
    monkeypatch.setenv(NAME, raw)
    assert Lifecycle().pre_stop_delay == float(raw)
    assert Lifecycle(pre_stop_delay=float(raw)).pre_stop_delay == float(raw)
