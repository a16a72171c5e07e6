"""Async blob puts: statekit's AsyncBlobStore (the sync put pipeline, boto3, in a worker
thread fed through a bounded queue) against the same put written on aiobotocore.

    .venv/bin/python bench/blobs_async.py                     # AsyncBlobStore and sync BlobStore only
    pip install --target /tmp/aiobotocore aiobotocore         # its own botocore, outside the venv
    .venv/bin/python bench/blobs_async.py --aiobotocore /tmp/aiobotocore

One moto S3 server (started here, loopback) serves every run. Each case runs in a
fresh subprocess, ``--rounds`` times, the kinds interleaved (a busy moment of the
machine hits all of them): wall time of the puts (median of every put, or batch of
puts, of every round), CPU time of the process (every thread) per put or batch, peak
RSS growth (the highest RSS sampled every 2 ms during the puts minus RSS before the
first, after a warm-up put), and the event loop's worst lag (a heartbeat task
sleeping 5 ms) while the puts run. Bodies are async generators of
64 KiB chunks, each a new object, as a server's request body is.

Cases: one put of 1 KiB, 1 MiB and 20 MiB; 20 puts of 1 MiB at once on one loop.

* ``thread``: ``AsyncBlobStore.put(body)``: sniffing, limits, SHA-256, conditional
  single or multipart write (5 MiB parts, 2 in flight), exactly the sync pipeline.
* ``aiobotocore``: the same requests from the event loop (SHA-256 checksums on every
  request, ``If-None-Match: *``, 5 MiB parts with 2 in flight, the SHA-256 tag after a
  multipart upload), no sniffing: the floor an async-native client would give.
* ``sync``: ``BlobStore.put`` called directly, no event loop (20 threads at once for
  the concurrent case): the pipeline's own cost.

aiobotocore pins its own botocore, so it is installed apart (``--target``) and only
its subprocesses see it (``PYTHONPATH``); the venv is left as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this tree's statekit

from statekit.testing.loop import LoopLag  # noqa: E402

KiB, MiB = 1024, 1024 * 1024
CHUNK = 64 * KiB
PART = 5 * MiB
BLOCK = os.urandom(CHUNK)
CASES = [("1 KiB", KiB, 1), ("1 MiB", MiB, 1), ("20 MiB", 20 * MiB, 1), ("20 x 1 MiB at once", MiB, 20)]


def chunks(total: int) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        n = min(CHUNK, total - sent)
        yield bytes(memoryview(BLOCK)[:n])
        sent += n


async def abody(total: int) -> AsyncIterator[bytes]:
    for data in chunks(total):
        yield data


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // KiB


class RSSSampler(threading.Thread):
    """The highest RSS seen every 2 ms while it runs (``ru_maxrss`` would include the
    peak of imports, freed before the measurement starts)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = rss_kib()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.002):
            self.peak = max(self.peak, rss_kib())

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, rss_kib())


# -- the aiobotocore put ---------------------------------------------------------------
async def aiobotocore_put(client: Any, bucket: str, body: AsyncIterator[bytes]) -> str:
    """Stream *body* to a new key: one conditional PutObject up to 5 MiB, else a
    multipart upload of 5 MiB parts, 2 in flight; SHA-256 checksums throughout."""
    key = f"bench/{uuid.uuid4().hex}.bin"
    digest, buf = hashlib.sha256(), bytearray()
    upload_id: str | None = None
    parts: list[dict[str, Any]] = []
    inflight: set[asyncio.Task[dict[str, Any]]] = set()

    async def send(number: int, data: bytes) -> dict[str, Any]:
        sha = base64.b64encode(hashlib.sha256(data).digest()).decode()
        resp = await client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                        Body=data, ChecksumSHA256=sha, ChecksumAlgorithm="SHA256")
        return {"PartNumber": number, "ETag": resp["ETag"], "ChecksumSHA256": sha}

    try:
        async for data in body:
            digest.update(data)
            buf += data
            if len(buf) < PART:
                continue
            if upload_id is None:
                upload_id = (await client.create_multipart_upload(
                    Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256"))["UploadId"]
            while len(inflight) >= 2:
                done, _ = await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                inflight -= done
                parts += [t.result() for t in done]
            inflight.add(asyncio.create_task(send(len(parts) + len(inflight) + 1, bytes(buf))))
            buf = bytearray()
        if upload_id is None:
            await client.put_object(Bucket=bucket, Key=key, Body=bytes(buf), IfNoneMatch="*",
                                    ChecksumSHA256=base64.b64encode(digest.digest()).decode(),
                                    ChecksumAlgorithm="SHA256")
            return key
        if buf:
            inflight.add(asyncio.create_task(send(len(parts) + len(inflight) + 1, bytes(buf))))
        parts += await asyncio.gather(*inflight)
        parts.sort(key=lambda p: p["PartNumber"])
        await client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, IfNoneMatch="*",
                                               MultipartUpload={"Parts": parts})
        await client.put_object_tagging(Bucket=bucket, Key=key, Tagging={
            "TagSet": [{"Key": "statekit-sha256", "Value": digest.hexdigest()}]})
        return key
    except BaseException:
        for t in inflight:
            t.cancel()
        if upload_id is not None:
            await client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise


# -- one case in this process ------------------------------------------------------------
async def _lagged(puts: Any) -> tuple[Any, float]:
    async with LoopLag() as lag:
        result = await puts
    return result, lag.worst


def child(args: argparse.Namespace) -> dict[str, Any]:
    walls: list[float] = []
    lags: list[float] = []
    sampler: RSSSampler | None = None
    before = 0
    cpu0 = 0.0

    def start() -> None:
        nonlocal before, cpu0, sampler
        if sampler is None:
            before = rss_kib()
            cpu0 = time.process_time()
            sampler = RSSSampler()
            sampler.start()

    if args.kind == "sync":
        from concurrent.futures import ThreadPoolExecutor

        from statekit.blobs import BlobStore

        store = BlobStore(args.url)
        store.put(b"warm up", content_type="text/plain")
        with ThreadPoolExecutor(args.count) as pool:
            for _ in range(args.repeat):
                start()
                t = time.perf_counter()
                list(pool.map(lambda _: store.put(chunks(args.size)), range(args.count)))
                walls.append(time.perf_counter() - t)
        store.close()
    elif args.kind == "thread":
        from statekit.blobs import AsyncBlobStore

        async def run_thread() -> None:
            async with AsyncBlobStore(args.url) as store:
                await store.put(b"warm up", content_type="text/plain")
                for _ in range(args.repeat):
                    start()
                    t = time.perf_counter()
                    _, lag = await _lagged(asyncio.gather(*(store.put(abody(args.size))
                                                            for _ in range(args.count))))
                    walls.append(time.perf_counter() - t)
                    lags.append(lag)

        asyncio.run(run_thread())
    else:
        from aiobotocore.session import get_session  # type: ignore[import-not-found]

        async def run_aio() -> None:
            async with get_session().create_client(
                    "s3", endpoint_url=args.endpoint, region_name="us-east-1") as client:
                await aiobotocore_put(client, args.bucket, abody(10))
                for _ in range(args.repeat):
                    start()
                    t = time.perf_counter()
                    _, lag = await _lagged(asyncio.gather(*(
                        aiobotocore_put(client, args.bucket, abody(args.size)) for _ in range(args.count))))
                    walls.append(time.perf_counter() - t)
                    lags.append(lag)

        asyncio.run(run_aio())
    assert sampler is not None
    peak = sampler.stop()
    return {"walls": walls, "cpu": (time.process_time() - cpu0) / args.repeat,
            "rss_growth_mib": max(0, peak - before) / 1024, "lag_ms": max(lags) * 1000 if lags else None}


# -- the driver --------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--aiobotocore", metavar="DIR", help="a --target install of aiobotocore")
    ap.add_argument("--rounds", type=int, default=3, help="passes over every case and kind (default 3)")
    ap.add_argument("--repeat", type=int, default=3, help="puts (or batches) per process (default 3)")
    ap.add_argument("--child", dest="kind", help=argparse.SUPPRESS)
    for name in ("url", "endpoint", "bucket"):
        ap.add_argument(f"--{name}", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.kind:
        print(json.dumps(child(args)))
        return

    from statekit.embedded import S3_ACCESS_KEY, S3_SECRET_KEY, S3Server

    kinds = ["thread", "sync"] + (["aiobotocore"] if args.aiobotocore else [])
    print(f"# async blob puts to moto S3 on loopback; {args.rounds} rounds, each running every case "
          f"and kind in a fresh process ({args.repeat} puts or batches each, after a warm-up); "
          f"load average {os.getloadavg()[0]:.2f}")
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with S3Server(f"bench-{uuid.uuid4().hex[:8]}") as server:
        for _ in range(args.rounds):  # interleaved: a busy moment hits every kind alike
            for label, size, count in CASES:
                for kind in kinds:
                    env = dict(os.environ, AWS_ACCESS_KEY_ID=S3_ACCESS_KEY,
                               AWS_SECRET_ACCESS_KEY=S3_SECRET_KEY)
                    if kind == "aiobotocore":
                        env["PYTHONPATH"] = os.pathsep.join([args.aiobotocore, env.get("PYTHONPATH", "")])
                    cmd = [sys.executable, __file__, "--child", kind, "--url", server.url, "--endpoint",
                           server.endpoint_url, "--bucket", server.bucket, "--size", str(size), "--count",
                           str(count), "--repeat", str(args.repeat)]
                    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
                                         check=False)
                    if out.returncode:
                        sys.exit(f"{label} {kind} failed:\n{out.stderr[-2000:]}")
                    last = out.stdout.strip().splitlines()[-1]
                    results.setdefault((label, kind), []).append(json.loads(last))
    print(f"# {'case':<20} {'kind':<12} {'wall p50':>9} {'MiB/s':>7} {'cpu':>7} {'RSS +MiB':>9} "
          f"{'loop lag':>9}")
    for label, size, count in CASES:
        for kind in kinds:
            runs = results[(label, kind)]
            wall = statistics.median(w for r in runs for w in r["walls"])
            cpu = statistics.median(r["cpu"] for r in runs)
            rss = max(r["rss_growth_mib"] for r in runs)
            lags = [r["lag_ms"] for r in runs if r["lag_ms"] is not None]
            lag = f"{max(lags):.1f} ms" if lags else "-"
            print(f"  {label:<20} {kind:<12} {wall * 1000:7.1f}ms {size * count / MiB / wall:7.1f} "
                  f"{cpu * 1000:5.0f}ms {rss:9.1f} {lag:>9}")
    print(f"# load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
