"""Fault tests: the S3 endpoint dies mid-upload, the input raises, the input is too long.

The "endpoint killed" case runs twice. Through a TCP proxy in front of moto that we
kill and restart on the same port: moto keeps its state, so the test can show that
the interrupted multipart upload exists server-side, is not visible as an object,
and is gone after ``cleanup_incomplete``. And with a private moto server killed with
SIGKILL and restarted (moto loses all state on restart, so that variant shows the
typed error and that the store works again).
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from statekit.blobs import BlobStore
from statekit.embedded import S3Server
from statekit.errors import BackendUnavailable, BlobTooLarge

MiB = 1024 * 1024
CHUNK = 64 * 1024

pytestmark = pytest.mark.s3


class TcpProxy:
    """A loopback TCP proxy to *target_port*; :meth:`kill` drops the listener and
    every open connection (the endpoint vanishes), :meth:`start` listens again on the
    same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self.port = ls.getsockname()[1]
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def kill(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def gen(
    total: int, on_bytes: dict[int, Any] | None = None, counter: list[int] | None = None
) -> Iterator[bytes]:
    sent = 0
    block = b"\x01\x02\x03\x04" * (CHUNK // 4)
    while sent < total:
        n = min(CHUNK, total - sent)
        if counter is not None:
            counter[0] = sent + n  # counted when handed out
        yield block[:n]
        sent += n
        if on_bytes:
            for mark in [m for m in on_bytes if sent >= m]:
                on_bytes.pop(mark)()


def _store(url: str, **kw: Any) -> BlobStore:
    return BlobStore(url + "&retries=0&connect_timeout=1&read_timeout=10", part_size=5 * MiB,
                     multipart_threshold=5 * MiB, **kw)


def _objects(client: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_endpoint_killed_mid_upload_through_proxy(s3_server: S3Server, s3_url: str) -> None:
    bucket = s3_url.split("@", 1)[1].split("?", 1)[0]
    direct = s3_server.client()
    proxy = TcpProxy(s3_server.port)
    proxy.start()
    try:
        url = s3_url.replace(s3_server.endpoint_url, proxy.endpoint_url)
        store = _store(url)

        def kill_after_a_part() -> None:  # once S3 holds a part, the endpoint vanishes
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                ups = direct.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
                if ups and direct.list_parts(Bucket=bucket, Key=ups[0]["Key"],
                                             UploadId=ups[0]["UploadId"]).get("Parts"):
                    break
                time.sleep(0.01)
            proxy.kill()

        with pytest.raises(BackendUnavailable):
            store.put(gen(40 * MiB, {6 * MiB: kill_after_a_part}), content_type="application/octet-stream")
        # The abort could not reach S3 either: the parts are there, but no object is.
        uploads = direct.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        assert len(uploads) == 1
        assert direct.list_parts(Bucket=bucket, Key=uploads[0]["Key"],
                                 UploadId=uploads[0]["UploadId"]).get("Parts")
        assert _objects(direct, bucket) == []
        with pytest.raises(direct.exceptions.ClientError):
            direct.head_object(Bucket=bucket, Key=uploads[0]["Key"])
        proxy.start()  # the endpoint is back, same port
        assert store.cleanup_incomplete(older_than=0) == 1
        assert direct.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        assert _objects(direct, bucket) == []
        assert store.put(b"alive again", content_type="text/plain").size == 11
    finally:
        proxy.kill()


def test_endpoint_process_killed_mid_upload() -> None:
    server = S3Server("crash")
    server.start()
    try:
        store = _store(server.url)
        with pytest.raises(BackendUnavailable):
            store.put(gen(40 * MiB, {12 * MiB: server.kill}), content_type="application/octet-stream")
        server.restart()
        client = server.client()
        assert _objects(client, "crash") == []
        assert store.cleanup_incomplete(older_than=0) == 0
        assert client.list_multipart_uploads(Bucket="crash").get("Uploads", []) == []
        blob = store.put(b"after the crash", content_type="text/plain")
        assert _objects(client, "crash") == [blob.key]
    finally:
        server.stop()


def test_input_stream_exception_aborts_multipart_at_once(s3_server: S3Server, s3_url: str) -> None:
    bucket = s3_url.split("@", 1)[1].split("?", 1)[0]
    direct = s3_server.client()
    store = _store(s3_url)

    class ClientGone(ConnectionResetError):
        pass

    def boom() -> None:
        raise ClientGone("browser closed the connection")

    with pytest.raises(ClientGone):
        store.put(gen(30 * MiB, {16 * MiB: boom}), content_type="application/octet-stream")
    # No cleanup run: the abort happened inside put().
    assert direct.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert _objects(direct, bucket) == []


def test_stream_longer_than_max_size_stops_at_the_limit(s3_server: S3Server, s3_url: str) -> None:
    bucket = s3_url.split("@", 1)[1].split("?", 1)[0]
    direct = s3_server.client()
    store = _store(s3_url)
    limit = 7 * MiB + 10
    produced = [0]
    with pytest.raises(BlobTooLarge):
        store.put(gen(100 * MiB, counter=produced), max_size=limit, content_type="application/octet-stream")
    assert limit < produced[0] <= limit + CHUNK  # one chunk past the limit, not 100 MiB
    assert direct.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert _objects(direct, bucket) == []

    class CountingReader(io.RawIOBase):
        def __init__(self) -> None:
            self.read_total = 0

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            n = len(b)
            b[:n] = b"z" * n
            self.read_total += n
            return n

    reader = CountingReader()
    with pytest.raises(BlobTooLarge):
        store.put(reader, max_size=limit, content_type="text/plain")
    assert reader.read_total == limit + 1  # exactly one byte past the limit
    assert _objects(direct, bucket) == []
