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
from collections.abc import Sequence
from types import FrameType

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


def serve(broadcaster: Broadcaster) -> int:
    """Run *broadcaster* in this thread until SIGTERM or SIGINT; returns 0."""
    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("broadcaster stopping (signal %d)", signum)
        broadcaster.stop(0)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        log.info("broadcaster %s running jobs: %s", broadcaster.owner, ", ".join(broadcaster.jobs) or "none")
        broadcaster.run_forever()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 0


def main(argv: Sequence[str]) -> int:
    """``statekit broadcast module:broadcaster``: run a broadcaster's jobs until
    SIGTERM/SIGINT. Any number may run at once; the lease keeps each job to one
    computation per interval."""
    from ..cli import PlainHelpFormatter

    parser = argparse.ArgumentParser(prog="statekit broadcast", description=main.__doc__,
                                     formatter_class=PlainHelpFormatter)
    parser.add_argument("target", help="module:attribute naming a statekit Broadcaster")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    opts = parser.parse_args(list(argv))
    logging.basicConfig(
        level=opts.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    return serve(load_broadcaster(opts.target))
