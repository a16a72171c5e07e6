"""The ``statekit broadcast module:broadcaster`` command: run a broadcaster's jobs in
this process until SIGTERM or SIGINT (also used by Django's ``statekit_broadcast``
and Flask's ``statekit-broadcast``)."""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

from ..errors import ConfigError
from .scheduler import Broadcaster

__all__ = ["load_broadcaster", "main", "serve"]

log = logging.getLogger("statekit.broadcast")


def load_broadcaster(target: str) -> Broadcaster:
    """Import ``"package.module:attribute"`` and return the :class:`Broadcaster` it
    names (a callable returning one is called)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{target!r} is not module:attribute (e.g. myproject.jobs:broadcaster)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"cannot import {module_name!r}: {e}") from e
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{module_name!r} has no attribute {attr!r}") from None
    if inspect.isfunction(obj):
        obj = obj()
    if not isinstance(obj, Broadcaster):
        raise ConfigError(f"{target!r} is a {type(obj).__name__}, not a statekit Broadcaster")
    return obj


#: seconds ``statekit broadcast`` gives its scheduler, after a stop signal, to end and
#: release its leases (a lease not released expires)
STOP_TIMEOUT = 10.0


class _Stop(BaseException):
    """Raised by a stop signal's handler in the main thread, which only waits: it ends
    the wait (a BaseException, as KeyboardInterrupt: no ``except Exception`` takes it)."""


def serve(broadcaster: Broadcaster) -> int:
    """Run *broadcaster*'s jobs (in its scheduler thread) until SIGTERM or SIGINT, or
    until it is stopped otherwise; returns 0.

    The signal handler does nothing but end this thread's wait; the stop is logged and
    done here, after it. A handler that logged could interrupt this thread's own write
    to stderr (a second write into one stream: RuntimeError 'reentrant call', and a
    logging traceback), and one that stopped the scheduler lost a signal that came
    between the handler's install and :meth:`Broadcaster.run_forever` clearing earlier
    stops (the broadcaster ran on after that SIGTERM)."""
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        raise _Stop

    old: dict[signal.Signals, Any] = {}
    try:
        for s in (signal.SIGTERM, signal.SIGINT):
            old[s] = signal.signal(s, on_signal)
        broadcaster.start()
        log.info("broadcaster %s running jobs: %s", broadcaster.owner, ", ".join(broadcaster.jobs) or "none")
        while broadcaster.running:  # until a signal, or a stop() from elsewhere (a job's)
            time.sleep(0.2)
    except _Stop:
        pass
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if received:
        log.info("broadcaster stopping (signal %d)", received[0])
    broadcaster.stop(STOP_TIMEOUT)
    return 0


def _log_level(raw: str) -> str:
    """An argparse type: a level name logging knows (any case), upper-cased."""
    level = raw.upper()
    if not isinstance(logging.getLevelName(level), int):
        raise argparse.ArgumentTypeError(f"{raw!r} is not a log level: DEBUG, INFO, WARNING, ERROR or "
                                         "CRITICAL")
    return level


def main(argv: Sequence[str]) -> int:
    """``statekit broadcast module:broadcaster``: run a broadcaster's jobs until
    SIGTERM/SIGINT. Any number may run at once; the lease keeps each job to one
    computation per interval."""
    from ..cli import PlainHelpFormatter

    parser = argparse.ArgumentParser(prog="statekit broadcast", description=main.__doc__,
                                     formatter_class=PlainHelpFormatter)
    parser.add_argument("target", help="module:attribute naming a statekit Broadcaster")
    parser.add_argument("--log-level", type=_log_level, default="INFO",
                        help="logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL (default INFO)")
    opts = parser.parse_args(list(argv))
    logging.basicConfig(
        level=opts.log_level, stream=sys.stderr,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    return serve(load_broadcaster(opts.target))
