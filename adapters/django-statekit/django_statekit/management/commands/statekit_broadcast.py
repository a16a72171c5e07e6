"""``manage.py statekit_broadcast``: run the project's broadcaster until SIGTERM/SIGINT.

The broadcaster is ``settings.STATEKIT_BROADCASTER`` (``"package.module:attribute"``)
or ``--broadcaster``. Run it on as many machines as you like: each job's lease keeps
it to one computation per interval for the whole cluster.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from statekit.broadcast import serve
from statekit.errors import ConfigError

from ...broadcast import get_broadcaster

__all__ = ["Command"]


class Command(BaseCommand):
    help = "Run a statekit broadcaster's jobs (STATEKIT_BROADCASTER) until SIGTERM/SIGINT."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--broadcaster", default=None,
                            help="package.module:attribute of a statekit Broadcaster")
        parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            broadcaster = get_broadcaster(options["broadcaster"])
        except ConfigError as e:
            raise CommandError(str(e)) from e
        logger = logging.getLogger("statekit")
        if not logger.handlers and not logging.getLogger().handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
            )
            logger.addHandler(handler)
        logger.setLevel(str(options["log_level"]).upper())
        serve(broadcaster)
