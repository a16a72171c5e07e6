"""``bench/cache_async.py`` compared ``StatekitCache.aget`` (Django's codec, statekit's
signed pickle) with ``AsyncCache.get`` (JSON) and nothing said so: review 18 read their CPU
gap (8.6 µs a get under Python 3.12) as Django's layer. The bench now runs ``AsyncCache``
with ``StatekitCache``'s codec beside them and prints the gap split, paired by round:
the codec's share and Django's layer's."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parent.parent / "bench" / "cache_async.py"


def _bench_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_bench_cache_async_review18", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gap_is_split_round_by_round() -> None:
    bench = _bench_module()
    Row = bench.Row
    # round 2 is loaded for every row (+50 µs): paired differences ignore it
    gets = {"statekit AsyncCache.get": Row([1.0, 1.0, 1.0], [60.0, 110.0, 61.0]),
            bench.SIGNED_GET: Row([1.0, 1.0, 1.0], [61.5, 111.0, 62.5]),
            "django StatekitCache.aget (native)": Row([1.0, 1.0, 1.0], [62.0, 111.5, 63.0])}
    line = bench.django_cpu(gets)
    assert line == ("CPU per get, StatekitCache.aget - AsyncCache.get = +2.0 µs (paired): the codec "
                    "(signed pickle - JSON) +1.5 µs, Django's layer (key, check, frame) +0.5 µs"), line


def test_the_bench_runs_statekit_cache_codec_beside_them() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--rounds", "1", "--scale", "0.02"], cwd=BENCH.parent,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    get_table = done.stdout.split("get, one task", 1)[1].split("\n\n", 1)[0]
    rows = [line.split("  ")[1].strip() for line in get_table.splitlines()[1:] if line.startswith("  ")]
    # beside StatekitCache.aget, after AsyncCache.get (every get of the bench is checked to
    # return the value set, so the row reads the value through the signed-pickle codec)
    assert rows.index("statekit AsyncCache.get") < rows.index("statekit AsyncCache.get, signed pickle") \
        == rows.index("django StatekitCache.aget (native)") - 1, rows
    split = re.search(r"StatekitCache\.aget - AsyncCache\.get = [+-]\d+\.\d µs \(paired\): the codec "
                      r"\(signed pickle - JSON\) [+-]\d+\.\d µs, Django's layer \(key, check, frame\) "
                      r"[+-]\d+\.\d µs", done.stdout)
    assert split is not None, done.stdout[-3000:]
    concurrent = done.stdout.split("tasks at once", 1)[1]
    assert "signed pickle" not in concurrent.split("\n\n", 1)[0]
