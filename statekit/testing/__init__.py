"""What users and backend authors need for their own tests, shipped in the wheel.

* the embedded servers (:mod:`statekit.embedded`): a private Redis/Valkey (standalone,
  Sentinel, Cluster) and an S3 endpoint on free loopback ports;
* the pytest plugin (:mod:`statekit.pytest_plugin`, loaded by pytest on its own):
  fixtures that start them;
* :mod:`statekit.testing.contracts`: one contract suite per capability. A backend,
  built in or from another distribution, subclasses the capability's contract class,
  provides the fixture that builds it, and runs the whole contract.
"""

from __future__ import annotations

from ..embedded import RedisCluster, RedisSentinel, RedisServer, S3Server

__all__ = ["RedisCluster", "RedisSentinel", "RedisServer", "S3Server"]
