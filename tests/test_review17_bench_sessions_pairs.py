"""bench/sessions.py's paired rounds: the order now and before run in (ABBA), the
interval and verdict on a median ratio, and the CPU a process tree ran (real
processes and threads; no timing asserted, only CPU each one was made to use)."""

from __future__ import annotations

import http.server
import math
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import sessions as bench  # noqa: E402

KINDS = ["cookie", "flask-session", "statekit", "statekit@before", "statekit-near", "statekit-near@before"]


def test_each_round_runs_every_kind_once_with_a_pair_back_to_back_in_alternating_order() -> None:
    firsts: dict[str, list[str]] = {"statekit": [], "statekit-near": []}
    places: dict[str, set[tuple[int, str]]] = {"statekit": set(), "statekit-near": set()}
    for i in range(8):
        order = bench.round_order(KINDS, i)
        assert sorted(order) == sorted(KINDS)
        for now in firsts:
            at = min(order.index(now), order.index(f"{now}@before"))
            assert {order[at], order[at + 1]} == {now, f"{now}@before"}, order
            firsts[now].append(order[at])
            places[now].add((at, order[at]))
    for now, seen in firsts.items():
        assert seen == [now, f"{now}@before"] * 4  # ABBA ABBA ...
        # the pair took turns at the four units' places, each place in both orders
        spots = {at for at, _ in places[now]}
        assert len(spots) == 4
        assert places[now] == {(at, first) for at in spots for first in (now, f"{now}@before")}
    # without before kinds: every kind once, taking turns at the front
    base = ["cookie", "flask-session", "statekit", "statekit-near"]
    assert [bench.round_order(base, i)[0] for i in range(0, 8, 2)] == base


@pytest.mark.parametrize("n", [6, 8, 9, 12, 20])
def test_the_interval_holds_the_median_at_95_percent_whatever_the_count(n: int) -> None:
    s = bench.spread([float(v) for v in range(n)])
    outside = 2 * sum(math.comb(n, j) for j in range(s.k)) / 2**n
    assert s.confidence == pytest.approx(1 - outside)
    assert s.confidence >= 0.95
    # the narrowest such interval: one place further in would fall below 95 %
    if s.k + 1 <= n // 2:
        assert 2 * sum(math.comb(n, j) for j in range(s.k + 1)) / 2**n > 0.05
    assert (s.low, s.high) == (float(s.k - 1), float(n - s.k))
    assert (s.least, s.most, s.rounds) == (0.0, float(n - 1), n)
    assert s.k == {6: 1, 8: 1, 9: 2, 12: 3, 20: 6}[n]


def test_the_verdict_is_within_noise_when_the_interval_straddles_the_target() -> None:
    def s(low: float, high: float) -> bench.Spread:
        return bench.spread([low, (low + high) / 2, high, low, high, (low + high) / 2])

    assert bench.verdict(s(0.96, 1.10), 0.95, at_least=True) == "met"
    assert bench.verdict(s(0.90, 1.10), 0.95, at_least=True) == "within noise"
    assert bench.verdict(s(0.80, 0.94), 0.95, at_least=True) == "MISSED"
    assert bench.verdict(s(0.90, 1.05), 1.05, at_least=False) == "met"
    assert bench.verdict(s(1.00, 1.10), 1.05, at_least=False) == "within noise"
    assert bench.verdict(s(1.06, 1.20), 1.05, at_least=False) == "MISSED"


def test_ratios_pair_each_round_with_the_same_round() -> None:
    rounds = {"a": {"read_rps": [100.0, 200.0, 300.0]}, "b": {"read_rps": [50.0, 400.0, 300.0]}}
    assert bench.ratios(rounds, "a", "b", "read_rps") == [2.0, 0.5, 1.0]


def test_a_round_that_served_nothing_is_a_ratio_of_0_or_inf_or_left_out() -> None:
    nan = math.nan
    rounds = {"a": {"rps": [0.0, 100.0, 0.0, 100.0], "cpu": [nan, 500.0, nan, 400.0]},
              "b": {"rps": [100.0, 0.0, 0.0, 50.0], "cpu": [400.0, nan, nan, 400.0]}}
    assert bench.ratios(rounds, "a", "b", "rps") == [0.0, math.inf, 2.0]  # both 0: no information
    assert bench.ratios(rounds, "a", "b", "cpu") == [1.0]
    s = bench.spread([0.0, math.inf, 2.0, 1.0, 1.0, 1.0])
    assert (s.median, s.low, s.high, s.rounds) == (1.0, 0.0, math.inf, 6)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def test_the_load_clock_starts_when_every_client_has_connected(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that takes longer to connect than the load lasts: the clock started
    before the threads, so a loaded machine's round could count no requests at all
    (a ZeroDivisionError in the ratios)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    connect = socket.create_connection

    def slow_connect(*args: Any, **kwargs: Any) -> socket.socket:
        time.sleep(0.5)  # longer than the 0.2 s of load: each client connects after it would have ended
        return connect(*args, **kwargs)

    monkeypatch.setattr(bench.socket, "create_connection", slow_connect)
    try:
        count, took = bench.load(server.server_address[1], ["session=x"], "GET", "/read", 4, 0.2)
    finally:
        server.shutdown()
        server.server_close()
        serving.join(10)
    assert count > 0
    assert took >= 0.2


BURNER = textwrap.dedent(r"""
    import os, sys, threading, time

    def burn(seconds):
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    sys.stdin.readline()
    child = os.fork()
    if child == 0:
        burn(0.1)
        os.write(1, b"child\n")
        sys.stdin.readline()
        os._exit(0)
    def side():
        burn(0.1)
        os.write(1, b"thread\n")
        sys.stdin.readline()

    threading.Thread(target=side).start()
    burn(0.1)
    os.write(1, b"parent\n")  # one write each: the three lines cannot interleave
    sys.stdin.readline()
""")


def test_cpu_since_counts_every_thread_and_child_process_of_the_tree() -> None:
    with subprocess.Popen([sys.executable, "-c", BURNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        out = proc.stdout
        try:
            before = bench._thread_cpu(proc.pid)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            lines: list[str] = []
            reader = threading.Thread(target=lambda: lines.extend(out.readline().strip() for _ in range(3)),
                                      daemon=True)
            reader.start()
            reader.join(60)
            assert not reader.is_alive(), f"the burners said only {lines} in 60 s"
            assert sorted(lines) == ["child", "parent", "thread"]
            # the main thread, the other thread and the child process have each run
            # 0.1 s on a CPU (thread_time), at least
            used = bench._cpu_since(proc.pid, before)
            assert used >= 0.3 * 0.99, used
            assert len(bench._thread_cpu(proc.pid)) >= 3
        finally:
            proc.stdin.close()  # every burner ends at end of file
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
