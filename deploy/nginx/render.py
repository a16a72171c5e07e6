"""Render statekit's nginx config from the templates next to this file.

Used by the tests and by hand; the docker-compose setup can use the official nginx
image's envsubst templates instead (see statekit.conf.template). Standard library
only, so it runs without statekit installed::

    python deploy/nginx/render.py --listen 8080 --upstream 127.0.0.1:8001 \\
        --upstream 127.0.0.1:8002 > statekit.conf            # the http-level snippet
    python deploy/nginx/render.py ... --prefix /tmp/nginx > /tmp/nginx/nginx.conf
                                                             # a complete nginx.conf
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from string import Template

__all__ = ["HERE", "render_nginx_config", "upstream_servers"]

HERE = Path(__file__).resolve().parent


def upstream_servers(upstreams: Sequence[str], *, max_fails: int = 1, fail_timeout: str = "2s") -> str:
    """``server host:port max_fails=.. fail_timeout=..;`` lines for the upstream block."""
    if not upstreams:
        raise ValueError("at least one upstream host:port is needed")
    return "\n    ".join(
        f"server {u} max_fails={max_fails} fail_timeout={fail_timeout};" for u in upstreams
    )


def render_nginx_config(
    upstreams: Sequence[str],
    listen: str | int,
    *,
    prefix: str | os.PathLike[str] | None = None,
    max_body: str = "100m",
    fail_timeout: str = "2s",
) -> str:
    """The rendered config.

    :param upstreams: ``host:port`` of each ``statekit serve`` instance.
    :param listen: what nginx listens on (``8080``, ``127.0.0.1:8080``).
    :param prefix: when given, a complete ``nginx.conf`` whose pid file, logs and
        temporary files all live under this directory (for running nginx as a child
        process); otherwise the http-level snippet for ``conf.d/``.
    """
    site = Template((HERE / "statekit.conf.template").read_text()).safe_substitute(
        STATEKIT_UPSTREAM_SERVERS=upstream_servers(upstreams, fail_timeout=fail_timeout),
        STATEKIT_LISTEN=str(listen),
        STATEKIT_MAX_BODY=max_body,
    )
    if prefix is None:
        return site
    user = "user root root;" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
    return Template((HERE / "nginx.conf.template").read_text()).safe_substitute(
        STATEKIT_PREFIX=str(Path(prefix).resolve()),
        STATEKIT_USER=user,
        STATEKIT_SITE="\n".join("    " + line if line else "" for line in site.splitlines()),
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="render statekit's nginx config")
    p.add_argument("--upstream", action="append", required=True, metavar="HOST:PORT")
    p.add_argument("--listen", default="8080")
    p.add_argument("--prefix", help="render a complete nginx.conf using this directory")
    p.add_argument("--max-body", default="100m")
    opts = p.parse_args(argv)
    text = render_nginx_config(opts.upstream, opts.listen, prefix=opts.prefix, max_body=opts.max_body)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
