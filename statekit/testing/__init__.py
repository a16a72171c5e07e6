"""What users and backend authors need for their own tests, shipped in the wheel.

* the embedded servers (:mod:`statekit.embedded`): a private Redis/Valkey (standalone,
  Sentinel, Cluster) and an S3 endpoint on free loopback ports;
* the pytest plugin (:mod:`statekit.pytest_plugin`, loaded by pytest on its own):
  fixtures that start them;
* :mod:`statekit.testing.contracts`: one contract suite per capability. A backend,
  built in or from another distribution, subclasses the capability's contract class,
  provides the fixture that builds it, and runs the whole contract;
* :func:`tampered`: a signed cookie with its signature changed, for tests that check
  a tampered cookie is refused.
"""

from __future__ import annotations

from ..embedded import RedisCluster, RedisSentinel, RedisServer, S3Server

__all__ = ["RedisCluster", "RedisSentinel", "RedisServer", "S3Server", "tampered"]


def tampered(signed: str) -> str:
    """*signed* (a signed cookie value: ``...<separator><base64 signature>``) with one
    character of its signature changed, six from the end. Not the last ones: the final
    base64 character carries padding bits that decoders ignore, so replacing the end
    (``signed[:-2] + "AA"``) leaves the signature unchanged about once in a thousand
    values, and a test of a tampered cookie then sees it accepted."""
    if len(signed) < 6:
        raise ValueError("not a signed value: too short")
    i = len(signed) - 6
    return signed[:i] + ("A" if signed[i] != "A" else "B") + signed[i + 1:]
