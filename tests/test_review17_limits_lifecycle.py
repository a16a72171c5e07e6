"""Review 17: the readiness endpoint's numbers are checked when a :class:`Lifecycle` is
made, by the one numeric check the adapters' settings go through (``config.number``).
The budget was checked ``budget > 0`` only, so ``Lifecycle(budget=math.inf)`` started
and then every readiness probe whose check was still running answered 503 with
'OverflowError: timestamp out of range for platform time_t' (``Future.result(timeout=inf)``):
never ready. ``retry_after=inf`` was an OverflowError, a negative one a
``Retry-After: -1`` header; a ``cache_ttl`` of inf reused one answer for ever."""

from __future__ import annotations

import math
import threading

import pytest

from statekit.errors import ConfigError
from statekit.lifecycle import Lifecycle


@pytest.mark.parametrize("budget", [math.inf, math.nan, 0, -1, "soon"])
def test_readiness_budget_must_be_a_finite_positive_number(budget: object) -> None:
    with pytest.raises(ConfigError, match="budget"):
        Lifecycle(checks={}, budget=budget)  # type: ignore[arg-type]


@pytest.mark.parametrize("kw", [{"retry_after": math.inf}, {"retry_after": -1},
                                {"cache_ttl": math.inf}, {"cache_ttl": math.nan}, {"cache_ttl": -1}])
def test_retry_after_and_cache_ttl_are_finite_and_not_negative(kw: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match=next(iter(kw))):
        Lifecycle(checks={}, **kw)  # type: ignore[arg-type]


def test_a_slow_check_within_a_huge_budget_is_waited_for() -> None:
    answered = threading.Event()
    lifecycle = Lifecycle(checks={"slow": lambda budget: answered.wait(0.2)}, budget=1e9)
    ok, results = lifecycle.run_checks()
    assert ok and results == {"slow": "ok"}, results
    assert (lifecycle.budget, lifecycle.retry_after, lifecycle.cache_ttl) == (1e9, 1, 1.0)
