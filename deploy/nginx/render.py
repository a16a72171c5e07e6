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
    """The upstream block's lines: ``server host:port max_fails=.. fail_timeout=..;``
    for each instance, then each instance again as a ``backup`` that is never marked
    failed (``max_fails=0``).

    A failed attempt (a drain 503, a refused connection, a reset from a killed
    worker) keeps an instance out for *fail_timeout*. When every instance is out at
    once (workers killed on both within *fail_timeout*), nginx OSS answers 502 "no
    live upstreams" without trying any; the backup lines give such a request (and
    its retries) somewhere to go instead.
    """
    if not upstreams:
        raise ValueError("at least one upstream host:port is needed")
    primary = [f"server {u} max_fails={max_fails} fail_timeout={fail_timeout};" for u in upstreams]
    backup = [f"server {u} backup max_fails=0;" for u in upstreams] if len(upstreams) > 1 else []
    return "\n    ".join(primary + backup)


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
