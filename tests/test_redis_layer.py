"""One Redis layer: no module of statekit/ opens its own socket to Redis or speaks
RESP by hand; every Redis command goes through redis-py (statekit.redis)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import statekit

ROOT = Path(statekit.__file__).parent

#: modules that use sockets for something other than talking to Redis, and why
SOCKETS_ALLOWED = {
    # starts the embedded servers: finds free ports, and waits until a server it just
    # started listens (a readiness probe of its own child process, not a client)
    "embedded.py": "starts servers: free ports and readiness probes",
    # the demo's HTTP side: finds a free port for the demo web server
    "phoenix.py": "a free port for the demo web server",
    # gunicorn integration and lifecycle: listening sockets and HTTP health checks
    "gunicorn.py": "the web server's listening sockets",
    "lifecycle.py": "HTTP drain and health endpoints",
}

#: modules of the Redis client stack a statekit module must not import itself
LOW_LEVEL = {"socket", "ssl", "hiredis"}

#: the one use of hiredis allowed: its command packer (issue 17: "commands packed by
#: hiredis where installed"), which redis-py would call through one encoder call per
#: argument; replies are still read by redis-py's parser (no hiredis.Reader anywhere)
PACKER_ALLOWED = {"redis/transport.py"}


def _only_the_packer(tree: ast.AST) -> bool:
    """Whether every hiredis import of *tree* is ``from hiredis import pack_command``."""
    found = [n for n in ast.walk(tree) if (isinstance(n, ast.ImportFrom) and n.module == "hiredis")
             or (isinstance(n, ast.Import) and any(a.name.split(".")[0] == "hiredis" for a in n.names))]
    return all(isinstance(n, ast.ImportFrom) and [a.name for a in n.names] == ["pack_command"]
               for n in found)

#: RESP framing: an array or bulk header (``*3\r\n``, ``$5\r\n``, ``*%d``) in a literal
RESP = re.compile(rb"(^|\r\n)[*$](\d+|%d|\{)")


def _modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_module_opens_its_own_socket_to_redis() -> None:
    offenders = {}
    for path in _modules():
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        low = _imports(tree) & LOW_LEVEL
        if rel in PACKER_ALLOWED and _only_the_packer(tree):
            low.discard("hiredis")
        if low and rel not in SOCKETS_ALLOWED:
            offenders[rel] = sorted(low)
    assert offenders == {}, f"modules importing socket-level libraries: {offenders}"
    # the allow-list names only modules that exist (a module moved must be named anew)
    assert [name for name in SOCKETS_ALLOWED if not (ROOT / name).exists()] == []


def test_no_module_speaks_resp_by_hand() -> None:
    offenders = []
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, (bytes, str)):
                raw = node.value if isinstance(node.value, bytes) else node.value.encode()
                if b"\r\n" in raw and RESP.search(raw):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, ast.Attribute) and node.attr in ("Reader", "pack_command"):
                base = node.value
                if isinstance(base, ast.Name) and base.id == "hiredis":
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == [], f"hand-written RESP: {offenders}"


def test_the_check_finds_what_it_looks_for(tmp_path: Path) -> None:
    """The two checks above are not vacuous: they flag a hand-made client."""
    source = 'import socket\nPING = b"*1\\r\\n$4\\r\\nPING\\r\\n"\nimport hiredis\nr = hiredis.Reader()\n'
    tree = ast.parse(source)
    assert _imports(tree) & LOW_LEVEL == {"socket", "hiredis"}
    constants = [n.value for n in ast.walk(tree)
                 if isinstance(n, ast.Constant) and isinstance(n.value, bytes)]
    assert any(RESP.search(c) for c in constants)
    assert not _only_the_packer(tree)  # the Reader is never allowed, even in transport.py
    assert _only_the_packer(ast.parse("from hiredis import pack_command\n"))


def test_a_cluster_client_that_gave_up_is_unavailable() -> None:
    """redis-py's cluster client raises ClusterError ("TTL exhausted.") when it ran
    out of redirections and retries: the sync error map makes it BackendUnavailable,
    as the asyncio one does (it was raised raw)."""
    import pytest
    import redis

    from statekit.errors import BackendUnavailable
    from statekit.redis import translate_errors

    with pytest.raises(BackendUnavailable, match="TTL exhausted") as info:
        with translate_errors("a cache call"):
            raise redis.exceptions.ClusterError("TTL exhausted.")
    assert isinstance(info.value.__cause__, redis.exceptions.ClusterError)


def test_read_replies_of_a_pipeline(redis_url: str) -> None:
    """The rule's connection reads a pipeline's replies in one call: error replies
    come back as values, and a reply that does not come in time stops the read with
    OutcomeUnknown after the replies that came (the connection is dropped, so the
    late reply is never read by the next command)."""
    import redis

    from statekit.redis import _rule, outcome_unknown, with_rule

    pool = redis.ConnectionPool.from_url(redis_url, socket_timeout=0.3)
    conn = pool.get_connection()
    conn.__class__ = with_rule(type(conn))
    try:
        pipeline = [("SET", "rr:k", "x"), ("INCR", "rr:k"), ("GET", "rr:k")]
        conn.send_packed_command(conn.pack_commands(pipeline))
        replies, failed = conn.read_replies(3)
        assert failed is None
        assert replies[0] in (b"OK", "OK") and replies[2] == b"x"
        assert isinstance(replies[1], redis.ResponseError) and "not an integer" in str(replies[1])
        assert conn._statekit_unread == 0
        conn.send_packed_command(conn.pack_commands([("PING",), ("BLPOP", "rr:empty", "2"), ("PING",)]))
        replies, failed = conn.read_replies(3)
        assert replies in ([b"PONG"], ["PONG"], [True])
        assert isinstance(failed, _rule().OutcomeUnknown) and outcome_unknown(failed)
        assert conn._sock is None  # dropped: the BLPOP's and the last PING's replies are never read
        assert conn.send_command("PING") is None and conn.read_response() in (b"PONG", "PONG", True)
    finally:
        conn.disconnect()
        pool.disconnect()
