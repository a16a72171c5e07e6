"""Blob upload benchmark: statekit BlobStore.put vs raw boto3 upload_fileobj.

    .venv/bin/python bench/blobs.py                 # default run (~60 s on a busy 2-CPU box)
    .venv/bin/python bench/blobs.py --quick         # without the 1 GiB upload to S3

1. Throughput: the same bytes, streamed from a generator, to the same moto S3 endpoint
   (a private server started here), alternating statekit and boto3, median of N rounds.
2. Peak RSS growth: each case runs in a fresh subprocess; growth = peak RSS after the
   upload (ru_maxrss) minus RSS just before it (after imports and a warm-up request).
   64 MiB to S3 for both (boto3 is the anchor); 1 GiB streamed to S3 and to file://.

Targets (issue 5): throughput >= 0.95x boto3; RSS growth <= 20 MiB at 64 MiB and 1 GiB.
CPU of this process per MiB uploaded is printed beside throughput.

``--before REV`` (e.g. 49db0e6, main before issue 17) then measures throughput and
the 64 MiB RSS growth now and at REV (a ``git worktree``) in alternating subprocess
runs against the same S3 server and prints now / before (target: unchanged within
noise; boto3's own now / before ratio shows the noise).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _trees import alternate, before_tree, commit, print_pairs  # noqa: E402

MiB = 1024 * 1024
CHUNK = 1 * MiB
_BLOCK = os.urandom(CHUNK)


def gen(total: int) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        n = min(CHUNK, total - sent)
        yield _BLOCK if n == CHUNK else _BLOCK[:n]
        sent += n


class GenReader(io.RawIOBase):
    """A non-seekable file object over :func:`gen` (what boto3 needs)."""

    def __init__(self, total: int) -> None:
        self._it = gen(total)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = next(self._it)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """This process's peak RSS (``VmHWM``; ``ru_maxrss`` would include the parent's
    RSS at fork time, which Linux carries across ``execve``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(kind: str, url: str, total: int) -> dict[str, float]:
    """Run in a subprocess: measure one upload's RSS growth and time."""
    from statekit.blobs import BlobStore

    if kind == "statekit":
        store = BlobStore(url)
        store.put(b"warm-up", content_type="text/plain")
        before = current_rss()
        t0 = time.perf_counter()
        store.put(gen(total), content_type="application/octet-stream")
    else:
        from boto3.s3.transfer import TransferConfig

        store = BlobStore(url)
        client, bucket = store.client, store.bucket  # type: ignore[attr-defined]
        client.put_object(Bucket=bucket, Key="warm-up", Body=b"warm-up")
        before = current_rss()
        t0 = time.perf_counter()
        client.upload_fileobj(GenReader(total), bucket, "raw-rss", Config=TransferConfig())
    elapsed = time.perf_counter() - t0
    return {"growth_mib": (peak_rss() - before) / MiB, "seconds": elapsed}


def run_child(kind: str, url: str, total: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", kind, url, str(total)],
                         capture_output=True, text=True, timeout=1800, check=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def throughput(url: str, total: int, rounds: int) -> dict[str, float]:
    from boto3.s3.transfer import TransferConfig

    from statekit.blobs import BlobStore

    store = BlobStore(url)
    client, bucket = store.client, store.bucket  # type: ignore[attr-defined]
    store.put(b"warm-up", content_type="text/plain")
    times: dict[str, list[float]] = {"statekit": [], "boto3": []}
    cpus: dict[str, list[float]] = {"statekit": [], "boto3": []}
    for i in range(rounds):
        for kind in ("statekit", "boto3") if i % 2 == 0 else ("boto3", "statekit"):
            t0, c0 = time.perf_counter(), time.process_time()
            if kind == "statekit":
                key = store.put(gen(total), content_type="application/octet-stream").key
            else:
                key = f"raw-{i}"
                client.upload_fileobj(GenReader(total), bucket, key, Config=TransferConfig())
            times[kind].append(time.perf_counter() - t0)
            cpus[kind].append(time.process_time() - c0)
            client.delete_object(Bucket=bucket, Key=key)  # not timed
    out = {k: total / MiB / statistics.median(v) for k, v in times.items()}
    out.update({f"{k}_best": total / MiB / min(v) for k, v in times.items()})
    out.update({f"{k}_cpu_ms_per_mib": statistics.median(v) / (total / MiB) * 1e3 for k, v in cpus.items()})
    return out


FIELDS = [("statekit", "statekit put", "MiB/s"), ("boto3", "anchor boto3 upload_fileobj", "MiB/s"),
          ("statekit_cpu_ms_per_mib", "statekit put CPU", "ms/MiB"),
          ("rss_mib", "statekit put 64 MiB, RSS growth", "MiB")]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=3, metavar=("KIND", "URL", "BYTES"))
    parser.add_argument("--quick", action="store_true", help="skip the 1 GiB upload to S3")
    parser.add_argument("--size", type=int, default=64, help="MiB per throughput upload (64)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--before", metavar="REV|PATH",
                        help="then throughput and RSS now vs at this commit (a git worktree) or checkout")
    parser.add_argument("--pairs", type=int, default=3, help="before/now run pairs (--before)")
    parser.add_argument("--s3-url", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        kind, url, total = opts.child
        print(json.dumps(child(kind, url, int(total))))
        return 0
    if opts.json:  # one throughput and RSS run against --s3-url, as JSON (--before's runs)
        result = throughput(opts.s3_url, opts.size * MiB, opts.rounds)
        result["rss_mib"] = run_child("statekit", opts.s3_url, 64 * MiB)["growth_mib"]
        print(json.dumps(result))
        return 0

    from statekit.embedded import S3Server

    with S3Server("bench") as server, tempfile.TemporaryDirectory() as tmp:
        url = server.url
        t = throughput(url, opts.size * MiB, opts.rounds)
        print(f"statekit {commit()}; throughput, {opts.size} MiB from a generator to moto S3, {opts.rounds} "
              f"rounds alternating (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs):")
        print("                         median      best   CPU (median)")
        print(f"  statekit put          {t['statekit']:6.1f}    {t['statekit_best']:6.1f}  MiB/s  "
              f"{t['statekit_cpu_ms_per_mib']:5.1f} ms/MiB")
        print(f"  boto3 upload_fileobj  {t['boto3']:6.1f}    {t['boto3_best']:6.1f}  MiB/s  "
              f"{t['boto3_cpu_ms_per_mib']:5.1f} ms/MiB")
        print(f"  ratio                 {t['statekit'] / t['boto3']:6.2f}x   "
              f"{t['statekit_best'] / t['boto3_best']:6.2f}x  (target >= 0.95x)")
        print("\npeak RSS growth during one upload (fresh subprocess each):")
        cases = [("statekit", url, 64 * MiB, "s3  64 MiB"), ("boto3", url, 64 * MiB, "s3  64 MiB"),
                 ("statekit", f"file://{tmp}/store?fsync=false&create=1", 1024 * MiB, "file 1 GiB")]
        if not opts.quick:
            cases.insert(2, ("statekit", url, 1024 * MiB, "s3  1 GiB"))
        for kind, case_url, total, label in cases:
            r = run_child(kind, case_url, total)
            print(f"  {kind:<9} {label:<11} {r['growth_mib']:7.1f} MiB   ({r['seconds']:.1f} s)"
                  + ("   (target <= 20 MiB)" if kind == "statekit" else ""))
        if opts.before:
            with before_tree(opts.before) as before:
                print(f"\nnow ({commit()}) vs before ({commit(before)}), {opts.pairs} run pairs alternating, "
                      f"same S3 server, {opts.size} MiB x {opts.rounds} rounds each:")
                pairs = alternate(Path(__file__), before, [
                    "--s3-url", url, "--size", str(opts.size), "--rounds", str(opts.rounds)], opts.pairs)
                ratios = print_pairs(pairs, FIELDS)
                print(f"  statekit throughput now/before {ratios['statekit']:.2f}x; the anchor, unchanged "
                      f"code, {ratios['boto3']:.2f}x (noise)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
