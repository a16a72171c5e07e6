"""Packaging: the statekit wheel ships only ``statekit/`` (typed), the adapter wheels
only their package; nothing installs a top-level ``adapters`` or ``tests``; a
missing extra is a ConfigError that names the ``pip install`` fixing it."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import upstream

from statekit.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def _pip_wheel(projects: list[Path], out: Path) -> list[Path]:
    """``pip wheel`` with the installed hatchling (no network, no build isolation):
    the wheels of *projects*, built into the empty directory *out* by one pip run
    (each pip start costs about a second of CPU)."""
    result = subprocess.run(
        [PY, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check",
         "-q", "-w", str(out), *map(str, projects)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == len(projects), wheels
    return wheels


def build_wheel(project: Path, out: Path) -> Path:
    """The wheel of *project*, built into the empty directory *out*."""
    (wheel,) = _pip_wheel([project], out)
    return wheel


def build_wheels(projects: dict[str, Path], out: Path) -> dict[str, Path]:
    """The wheels of *projects* (distribution name -> project directory), built into
    the empty directory *out*, by distribution name."""
    wheels = {w.name.split("-")[0]: w for w in _pip_wheel(list(projects.values()), out)}
    return {name: wheels[re.sub(r"[-_.]+", "_", name).lower()] for name in projects}


_run_wheels: list[Path] = []
_run_wheels_lock = threading.Lock()


def run_wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """statekit's wheel and the adapters', built once per run (by the first caller:
    the ``wheels`` fixture, or the user-path venv built in the background; by the first
    worker to ask under xdist) into one
    ``--find-links`` directory, with ``pins.txt``, one ``name==version`` per line."""
    def build() -> Path:
        projects = {"statekit": ROOT, "flask-statekit": ROOT / "adapters" / "flask-statekit",
                    "django-statekit": ROOT / "adapters" / "django-statekit",
                    "starlette-statekit": ROOT / "adapters" / "starlette-statekit"}
        out = tmp_path_factory.mktemp("wheels")
        built = build_wheels(projects, out)
        (out / "pins.txt").write_text("".join(f"{n}=={w.name.split('-')[1]}\n" for n, w in built.items()))
        return out

    with _run_wheels_lock:
        if not _run_wheels:
            _run_wheels.append(upstream.once("wheels", build))  # once for every xdist worker
        return _run_wheels[0]


@pytest.fixture(scope="module")
def wheel_files(wheels: Path) -> dict[str, Path]:
    """The wheels of the run (conftest.py builds them once), by import name."""
    names = ("statekit", "flask_statekit", "django_statekit", "starlette_statekit")
    return {name: next(wheels.glob(f"{name}-*.whl")) for name in names}


def top_levels(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return {n.split("/")[0] for n in z.namelist()}


ADAPTERS = ["flask_statekit", "django_statekit", "starlette_statekit"]


def metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as z:
        return z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()


@pytest.mark.parametrize("package", ["statekit", *ADAPTERS])
def test_wheel_ships_only_its_package(wheel_files: dict[str, Path], package: str) -> None:
    wheel = wheel_files[package]
    tops = top_levels(wheel)
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert len(dist_info) == 1
    assert tops - dist_info == {package}
    assert not tops & {"adapters", "tests", "examples", "bench", "docs", "conftest.py"}
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert f"{package}/py.typed" in names
    assert f"{package}/__init__.py" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert not any(part in ("tests", "conftest.py") or part.startswith("test_")
                   for n in names for part in n.split("/")), "tests inside the wheel"
    source = ROOT if package == "statekit" else ROOT / "adapters" / package.replace("_", "-")
    tracked = subprocess.run(["git", "ls-files", package], cwd=source, capture_output=True, text=True,
                             check=True).stdout.split()
    missing = sorted(set(tracked) - set(names))
    assert tracked and missing == [], f"tracked files missing from the wheel: {missing}"


def test_statekit_wheel_contents_and_metadata(wheel_files: dict[str, Path]) -> None:
    with zipfile.ZipFile(wheel_files["statekit"]) as z:
        names = set(z.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = z.read(f"{dist_info}/METADATA").decode()
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode()
    for extra in ("redis", "s3", "msgpack", "embedded", "server", "asgi", "prometheus", "blobs"):
        assert f"Provides-Extra: {extra}" in metadata
    assert "statekit = statekit.cli:main" in entry_points
    assert "statekit = statekit.pytest_plugin" in entry_points


@pytest.mark.parametrize("package", ADAPTERS)
def test_adapter_wheels_depend_on_statekit(wheel_files: dict[str, Path], package: str) -> None:
    meta = metadata(wheel_files[package])
    assert "Requires-Dist: statekit[redis]" in meta
    # released together: the adapter names the statekit series it was built with, so
    # an older or a next-series statekit is not installed beside it
    from packaging.requirements import Requirement

    requirement = Requirement(re.search(r"^Requires-Dist: (statekit\[redis\][^;\n]*)$", meta, re.M)[1])
    version = re.search(r"^Version: (\S+)$", metadata(wheel_files["statekit"]), re.M)[1]
    assert requirement.specifier.contains(version, prereleases=True)
    assert not requirement.specifier.contains("0.0.9") and not requirement.specifier.contains("1.0")
    assert "Classifier: Typing :: Typed" in meta and "Requires-Python: >=3.10" in meta
    # every extra an adapter's extras name is one the statekit wheel provides
    provided = set(re.findall(r"^Provides-Extra: (\S+)", metadata(wheel_files["statekit"]), re.M))
    named = set(re.findall(r"^Requires-Dist: statekit\[([^\]]+)\]", meta, re.M))
    assert {e for group in named for e in group.split(",")} <= provided


def test_starlette_wheel_declares_what_it_imports(wheel_files: dict[str, Path]) -> None:
    """starlette-statekit: Starlette, python-multipart (form uploads) and itsdangerous
    (the carry-over of Starlette's cookie sessions) are dependencies, uvicorn comes
    with its ``serve`` extra (``statekit[asgi]``), S3 with ``blobs``; FastAPI is not
    required. Every third-party module the wheel's code imports is declared."""
    wheel = wheel_files["starlette_statekit"]
    meta = metadata(wheel)
    requires = re.findall(r"^Requires-Dist: (.+)$", meta, re.M)
    assert {r for r in requires if "extra ==" not in r} == {
        "statekit[redis]<0.2,>=0.1.0.dev0", "starlette>=0.40", "python-multipart>=0.0.18",
        "itsdangerous>=2.1"}
    assert "statekit[asgi]; extra == 'serve'" in requires
    assert "statekit[blobs]; extra == 'blobs'" in requires
    assert not any(r.lower().startswith(("fastapi", "uvicorn")) for r in requires)
    declared = {re.split(r"[\[<>=~;! ]", r, maxsplit=1)[0].lower() for r in requires}
    imported: set[str] = set()
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.endswith(".py"):
                for node in ast.walk(ast.parse(z.read(name))):
                    if isinstance(node, ast.Import):
                        imported |= {a.name.split(".")[0] for a in node.names}
                    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"starlette_statekit"}
    assert third_party and third_party <= declared, third_party - declared


def test_wheel_alone_gives_an_importable_statekit(wheel_files: dict[str, Path], tmp_path: Path) -> None:
    """Fast version: the unpacked wheel, with no site-packages at all (-S), imports."""
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel_files["statekit"]) as z:
        z.extractall(target)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import statekit, statekit.config, statekit.errors; "
        "from statekit import parse_url; print(statekit.__file__, parse_url('redis://h').kind)"
    )
    out = subprocess.run([PY, "-S", "-E", "-c", code, str(target)], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    path, kind = out.stdout.split()
    assert path.startswith(str(target)) and kind == "redis"


def test_pip_install_into_a_fresh_venv(wheel_files: dict[str, Path], tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([PY, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    vpy = venv / "bin" / "python"
    subprocess.run(
        [PY, "-m", "pip", "--python", str(vpy), "install", "--no-deps", "--no-index",
         "--disable-pip-version-check", "-q", *(str(wheel_files[p]) for p in ("statekit", *ADAPTERS))],
        check=True, timeout=300, capture_output=True,
    )
    site = subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    installed = {p.name for p in Path(site).iterdir()}
    assert {"statekit", *ADAPTERS} <= installed
    assert not installed & {"adapters", "tests"}
    out = subprocess.run([str(vpy), "-c", "import statekit; print(statekit.__file__)"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(site)
    assert (venv / "bin" / "statekit").exists()


# -- missing extras -----------------------------------------------------------------


def test_missing_redis_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from statekit.redis import create_client

    monkeypatch.setitem(sys.modules, "redis", None)
    message = r"the 'redis' package is required for redis:// URLs: pip install 'statekit\[redis\]'"
    with pytest.raises(ConfigError, match=message):
        create_client("redis://127.0.0.1:6379/0")


def test_missing_boto3_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from statekit.backends import require

    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(ConfigError, match=r"pip install 'statekit\[s3\]'"):
        require("boto3", feature="s3:// URLs")


def test_missing_boto3_through_the_blob_store(monkeypatch: pytest.MonkeyPatch) -> None:
    from statekit.blobs.s3 import S3Backend as S3BlobStore

    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(ConfigError, match=r"pip install 'statekit\[s3\]'"):
        S3BlobStore("s3://bucket?endpoint_url=http://127.0.0.1:9&region=us-east-1")


def test_missing_msgpack_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from statekit.serializers import get_serializer

    monkeypatch.setitem(sys.modules, "msgpack", None)
    with pytest.raises(ConfigError, match=r"pip install 'statekit\[msgpack\]'"):
        get_serializer("msgpack")


def test_missing_moto_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from statekit.embedded import S3Server

    monkeypatch.setitem(sys.modules, "moto.server", None)
    # refused when created, before a caller (statekit dev) starts its other servers
    with pytest.raises(ConfigError, match=r"pip install 'statekit\[embedded\]'"):
        S3Server()


@pytest.mark.parametrize(
    ("module", "extra"),
    [("redis", "redis"), ("boto3", "s3"), ("botocore", "s3"), ("msgpack", "msgpack"),
     ("puremagic", "blobs"), ("gunicorn", "server"), ("moto", "embedded"),
     ("prometheus_client", "prometheus"), ("redis.cluster", "redis")],
)
def test_require_maps_every_module_to_an_existing_extra(
    monkeypatch: pytest.MonkeyPatch, module: str, extra: str
) -> None:
    from statekit.backends import require

    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ConfigError, match=rf"pip install 'statekit\[{extra}\]'"):
        require(module, feature="this feature")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f"\n{extra} = [" in pyproject  # the extra the message names exists


def test_the_readmes_install_from_a_checkout_resolves_statekit_from_the_checkout(tmp_path: Path) -> None:
    """The README's from-a-checkout line, as printed (``shlex``, run from the
    repository's root): pip resolves it with the checkout's statekit, not one from an
    index (an adapter's path alone could not find ``statekit``: a newcomer's trial)."""
    import json
    import shlex

    text = (ROOT / "README.md").read_text()
    install = re.search(r"^## Install\n(.*?)(?=^## )", text, re.S | re.M)
    assert install
    # the from-a-checkout block (the section's other shell block builds the wheels)
    (block,) = [b for b in re.findall(r"^```shell\n(.*?)^```$", install[1], re.S | re.M)
                if b.startswith("pip install")]
    (line,) = [shlex.split(x, comments=True) for x in block.splitlines() if x.strip()]
    assert line[:2] == ["pip", "install"] and "." in {a.split("[")[0] for a in line[2:]}
    report = tmp_path / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                    "--report", str(report), *line[2:]], cwd=ROOT, check=True, timeout=300,
                   capture_output=True)
    chosen = {i["metadata"]["name"]: i for i in json.loads(report.read_text())["install"]}
    version = re.search(r'^version = "(\S+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version and chosen["statekit"]["metadata"]["version"] == version[1]
    assert chosen["statekit"]["download_info"]["url"] == ROOT.as_uri()
    assert "flask-statekit" in chosen
