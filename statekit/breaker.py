"""A small circuit breaker: stop calling a backend that keeps failing.

While Redis is down every call would otherwise wait for a connect timeout. The
breaker counts consecutive failures; after ``failure_threshold`` of them it *opens*
and calls fail at once (no network I/O) for ``reset_timeout`` seconds. Then it is
*half-open*: one trial call goes through; success closes the breaker, failure opens
it again for another ``reset_timeout``. A trial that ends without an outcome (its task
was cancelled, it raised something that says nothing of the backend) frees its place
at once (:meth:`CircuitBreaker.abandoned`); one that never reports (its thread died)
is replaced by a new one after another ``reset_timeout``, so a lost trial cannot keep
the breaker half-open for good. So the breaker closes on its own once the backend is
back, without any caller having to notice.

Each call reads :attr:`CircuitBreaker.epoch` as it starts (before it checks the
state: a trial again after :meth:`CircuitBreaker.allow`) and hands it back with its
failure: a failure counts only in the period it began in (the epoch changes when the
breaker opens, closes or lets a trial through). Calls that were already waiting when
the breaker opened fail later, one after the other (each at its own timeout); they
neither move the open time (the trial still comes ``reset_timeout`` after the breaker
opened) nor end a trial that began after them.

All methods are safe from any thread. The closed-state fast path (:meth:`allow`,
:meth:`success`) takes no lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ._fork import reset_in_child

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "CircuitBreaker"]

CLOSED = "closed"
HALF_OPEN = "half-open"
OPEN = "open"

#: numeric value of each state, for the ``breaker_state`` gauge
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class CircuitBreaker:
    """Consecutive-failure circuit breaker.

    :param failure_threshold: consecutive failures that open the breaker.
    :param reset_timeout: seconds the breaker stays open before a trial call.
    :param on_change: called with the new state (``"closed"``, ``"open"``,
        ``"half-open"``) after every transition, outside the lock.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout: float = 2.0,
        *,
        on_change: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if reset_timeout <= 0:
            raise ValueError("reset_timeout must be positive")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_running = False
        self._trial_started = 0.0
        self.opened = 0  # how many times the breaker opened
        #: the current period: changes when the breaker opens, closes or lets a trial
        #: through (read by a call as it starts, handed to :meth:`failure`)
        self.epoch = 0
        reset_in_child(self)

    def reset_after_fork(self) -> None:
        """In a forked child: a new lock (a parent thread may have held it at the
        fork) and no trial in progress (the parent's trial call runs in the parent:
        a half-open breaker lets the child's first call try at once). The state and
        the failures stay: the backend was failing a moment ago."""
        self._lock = threading.Lock()
        self._trial_running = False

    @property
    def state(self) -> str:
        """The current state; an open breaker whose timeout passed reads as half-open."""
        if self._state == OPEN and self._clock() - self._opened_at >= self.reset_timeout:
            return HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """Whether a call may go to the backend now. In the half-open state only
        one caller at a time gets ``True`` (the trial call)."""
        if self._state == CLOSED:
            return True
        changed = None
        with self._lock:
            now = self._clock()
            if self._state == OPEN:
                if now - self._opened_at < self.reset_timeout:
                    return False
                self._state = changed = HALF_OPEN
                self._trial_running = False
            if self._trial_running and now - self._trial_started < self.reset_timeout:
                return False
            self._trial_running = True
            self._trial_started = now
            self.epoch += 1  # the trial's own: older calls' outcomes do not end it
        if changed is not None:
            self._notify(changed)
        return True

    def success(self) -> None:
        """Record a successful call."""
        if self._state == CLOSED and self._failures == 0:
            return
        with self._lock:
            changed = self._state != CLOSED
            self._state = CLOSED
            self._failures = 0
            self._trial_running = False
            if changed:
                self.epoch += 1
        if changed:
            self._notify(CLOSED)

    def failure(self, epoch: int | None = None) -> None:
        """Record a failed call (a timeout or connection error, not a bad value).

        :param epoch: :attr:`epoch` as the call started; a call that began in an
            earlier period (before the breaker opened, before the current trial,
            before it closed) is not counted. ``None``: a call of the current period.
        """
        with self._lock:
            if epoch is not None and epoch != self.epoch:
                return
            self._failures += 1
            self._trial_running = False
            if self._state == CLOSED and self._failures < self.failure_threshold:
                return
            reopened = self._state != OPEN
            self._state = OPEN
            self._opened_at = self._clock()
            self.epoch += 1
            if reopened:
                self.opened += 1
        if reopened:
            self._notify(OPEN)

    def abandoned(self, epoch: int) -> None:
        """Record a call that began in period *epoch* (:attr:`epoch` as it started) and
        ended without an outcome: its task was cancelled, it was interrupted, it raised
        something that says nothing of the backend. If it was the half-open trial, the
        next call may try at once (instead of after another ``reset_timeout``)."""
        if self._state == CLOSED:
            return
        with self._lock:
            if epoch == self.epoch:  # only the trial began in the current half-open period
                self._trial_running = False

    def reset(self) -> None:
        """Close the breaker and forget past failures (a transition, told to
        ``on_change`` as any other, if it was not closed)."""
        with self._lock:
            changed = self._state != CLOSED
            self._state = CLOSED
            self._failures = 0
            self._trial_running = False
            self.epoch += 1
        if changed:
            self._notify(CLOSED)

    def _notify(self, state: str) -> None:
        if self._on_change is not None:
            self._on_change(state)

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.state} failures={self._failures}>"
