"""Review 17, "a limit holds on every path": a broadcast job's ``timeout``.

``every(..., timeout=T)``: "a late result is logged, counted and discarded, and the
last good value stays". Only the scheduler's pass judged a run late (one due at
``started + T``): a result that came back before that pass ran was published, however
late. Two paths met it every time:

* ``Broadcaster.run_pending()``, the documented pass for a caller that drives the
  scheduler itself: no pass runs while the computation does;
* an ``async def`` job on :class:`AsyncBroadcaster` that holds the loop (CPU work,
  a blocking call): the pass cannot run until it returns, and the run publishes
  before the loop comes back to it.

(With the scheduler thread or task free, the pass due at ``started + T`` marks it; a
loaded machine that runs that pass late published it too.) The run now measures its
own computation and discards a result that took longer than ``timeout``.
"""

from __future__ import annotations

import asyncio
import math
import time

import pytest
from test_broadcast_async import until  # tests/ is on sys.path

from statekit.broadcast import AsyncBroadcaster, Broadcaster, SharedValue
from statekit.errors import ConfigError
from statekit.pytest_plugin import wait_for

pytestmark = pytest.mark.redis

TIMEOUT = 0.2
#: how long the computation takes: past TIMEOUT whatever the machine's load (a lower
#: bound: sleep never returns early)
TAKES = TIMEOUT + 0.5


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return "r17" + str(abs(hash(request.node.nodeid)) % 10**8)


def test_run_pending_discards_a_late_result(redis_url: str, prefix: str) -> None:
    b = Broadcaster(redis_url, key_prefix=prefix)
    b.publish("slow", "good")
    calls: list[float] = []

    @b.every(60, name="slow", timeout=TIMEOUT)
    def slow() -> str:
        calls.append(time.monotonic())
        time.sleep(TAKES)
        return "late"

    try:
        b.run_pending()  # claims the slot and starts the computation in a thread
        wait_for(lambda: calls, timeout=10, what="the computation started")
        wait_for(lambda: b.jobs["slow"].running == 0, timeout=30, what="the computation ended")
        assert b.retained("slow") == (1, "good")  # the last good value stays
        assert b.counters.get("timeouts") == 1
        assert b.counters.get("publishes") == 1  # the test's own
    finally:
        b.stop(5)


def test_async_job_that_holds_the_loop_is_discarded_when_late(redis_url: str, prefix: str) -> None:
    async def main() -> None:
        b = AsyncBroadcaster(redis_url, key_prefix=prefix)
        await b.publish("busy", "good")
        calls: list[float] = []

        @b.every(60, name="busy", timeout=TIMEOUT)
        async def busy() -> str:
            calls.append(time.monotonic())
            time.sleep(TAKES)  # the point: a job that holds the loop
            return "late"

        async with b:
            await until(lambda: calls, "the computation started")
            await until(lambda: b.jobs["busy"].running == 0, "the computation ended", timeout=30)
            assert await b.retained("busy") == (1, "good")
            assert b.counters.get("timeouts") == 1

    asyncio.run(main())


def test_a_run_within_its_timeout_publishes(redis_url: str, prefix: str) -> None:
    """What the check must not discard: a computation well within its timeout."""
    b = Broadcaster(redis_url, key_prefix=prefix)

    @b.every(60, name="quick", timeout=30)
    def quick() -> str:
        return "fresh"

    try:
        b.run_pending()
        wait_for(lambda: b.retained("quick") is not None, timeout=10, what="the value published")
        assert b.retained("quick") == (1, "fresh")
        assert b.counters.get("timeouts") == 0
    finally:
        b.stop(5)


@pytest.mark.parametrize("option", ["interval", "lease", "timeout"])
@pytest.mark.parametrize("value", [math.nan, math.inf, 0, -1, "5"])
def test_every_refuses_what_is_not_a_number_of_seconds(option: str, value: object) -> None:
    """``every()``'s interval, lease and timeout are limits the scheduler computes with:
    ``timeout=nan`` made no run late ever (every comparison false), ``lease=inf`` made
    each pass fail (``int(inf * 1000)``), ``interval=inf`` a wait the scheduler cannot
    make, ``"5"`` a TypeError. Each is a ConfigError naming it, at registration."""
    b = Broadcaster("memory://review17-every")
    kwargs: dict[str, object] = {"interval": 1.0, option: value}
    interval = kwargs.pop("interval")
    with pytest.raises(ConfigError, match=option):
        b.every(interval, name="job", **kwargs)(lambda: 1)  # type: ignore[arg-type]
    assert "job" not in b.jobs


@pytest.mark.parametrize("value", [0, -5, math.nan, "30", True])
def test_shared_values_max_age_is_checked_when_made(value: object) -> None:
    """``SharedValue(max_age=0)`` is a ConfigError at once; ``SharedValues(max_age=0)``
    (what the Flask, Django and Starlette adapters build from
    ``STATEKIT_BROADCAST_MAX_AGE``) took it, and each name's first use failed instead:
    inside a request, as a 500 or a template error. ``"30"`` failed there with a
    TypeError, and ``True`` was a max_age of 1 s."""
    from statekit.broadcast import SharedValues

    with pytest.raises(ConfigError, match="max_age"):
        SharedValue("x", max_age=value, url="memory://review17-max-age")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_age"):
        SharedValues("memory://review17-max-age", max_age=value)  # type: ignore[arg-type]


def test_flask_app_with_a_bad_broadcast_max_age_fails_at_start() -> None:
    flask = pytest.importorskip("flask")
    from flask_statekit import StateKit

    app = flask.Flask(__name__)
    app.config.update(STATEKIT_BROADCAST_URL="memory://review17-flask-max-age",
                      STATEKIT_BROADCAST_MAX_AGE="0", STATEKIT_CACHE_ENABLED=False,
                      STATEKIT_SESSIONS_ENABLED=False, SECRET_KEY="x" * 32)
    with pytest.raises(ConfigError, match="STATEKIT_BROADCAST_MAX_AGE"):
        StateKit(app)


@pytest.mark.parametrize("value", ["soon", "inf", "-1"])
def test_flask_and_starlette_read_broadcast_max_age_as_a_number(value: str) -> None:
    """The adapters read ``STATEKIT_BROADCAST_MAX_AGE`` through ``config.number`` (the
    one numeric check of settings): ``float(value)`` made ``"soon"`` a bare ValueError
    and ``"inf"`` a max_age no value ever reaches."""
    flask = pytest.importorskip("flask")
    from flask_statekit import StateKit

    app = flask.Flask(__name__)
    app.config.update(STATEKIT_BROADCAST_URL="memory://review17-flask-max-age",
                      STATEKIT_BROADCAST_MAX_AGE=value, STATEKIT_CACHE_ENABLED=False,
                      STATEKIT_SESSIONS_ENABLED=False, SECRET_KEY="x" * 32)
    with pytest.raises(ConfigError, match="STATEKIT_BROADCAST_MAX_AGE"):
        StateKit(app)

    starlette = pytest.importorskip("starlette.applications")
    from starlette_statekit import StateKit as StarletteStateKit

    with pytest.raises(ConfigError, match="STATEKIT_BROADCAST_MAX_AGE"):
        StarletteStateKit(starlette.Starlette(), cache_enabled=False, sessions_enabled=False,
                          config={"STATEKIT_BROADCAST_URL": "memory://review17-starlette-max-age",
                                  "STATEKIT_BROADCAST_MAX_AGE": value})
