"""Review 18: a Cluster pipeline's write whose outcome is unknown is not sent again.

redis-py's sync ``ClusterPipeline`` gives every command of a node whose replies it
could not read (a timeout, a dropped connection) that error, then sends each such
command again on its own (``parent_execute_command``) and, out of that, the whole
pipeline again while its ``retry`` allows: both match the error by ``isinstance``,
and statekit's :class:`OutcomeUnknown` (a command sent, its reply lost) is a
``ConnectionError``. A pipeline's ``INCR`` on statekit's Cluster client was applied
twice, or more.
"""

from __future__ import annotations

import pytest
from test_review16_sync_cluster_gate import _key_on  # (tests/ is on sys.path)

from statekit.embedded import RedisCluster
from statekit.redis import create_client, translate_errors

pytestmark = [pytest.mark.redis, pytest.mark.cluster]


@pytest.mark.parametrize("transaction", [False, True])
@pytest.mark.parametrize("retries", [0, 2])
@pytest.mark.parametrize("bounded", [False, True])
def test_a_pipeline_write_whose_outcome_is_unknown_is_sent_once(own_redis_cluster: RedisCluster, retries: int,
                                                               bounded: bool, transaction: bool) -> None:
    """An ``INCR`` in a pipeline (and a transaction's) to a master stopped as it is
    sent is applied once, with the URL's default retries and none, on a client of
    a URL with ``max_connections`` and without."""
    cluster = own_redis_cluster
    # no handshake (RESP2, no CLIENT SETINFO): a new connection to the stopped server
    # sends its command at once, as one made before would
    options = f"socket_timeout=0.5&retries={retries}&protocol=2" + ("&max_connections=4" if bounded else "")
    client = create_client(f"{cluster.url}?{options}", driver_info=None)
    try:
        node = client.get_primaries()[0]
        key = _key_on(client, node, "pipeline-incr")
        server = next(s for s in cluster.nodes if f"127.0.0.1:{s.port}" == node.name)
        client.get(key)  # connected
        server.pause()  # the INCR is sent and never answered: its outcome is unknown
        try:
            with pytest.raises(Exception) as caught, translate_errors("review18 pipeline"):
                pipe = client.pipeline(transaction=transaction)
                pipe.incr(key)
                pipe.execute()
        finally:
            server.resume()
        with server.client() as c:  # what was sent, applied as the server resumed
            assert c.get(key) == b"1"
        assert "outcome is unknown" in str(caught.value), caught.value
    finally:
        client.close()
