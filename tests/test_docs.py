"""Every code block of docs/migration.md and docs/starlette.md runs.

The guide is executed with sybil in a subprocess (its Django blocks configure Django
settings, which must not meet the adapter tests' settings in this process), in a
scratch directory, against the suite's private Redis and S3 endpoint:

* ``python`` blocks (visible, and invisible ones in ``<!-- invisible-code-block -->``
  comments that check what the visible ones do) share one namespace, in order; the
  invisible blocks' setup (imports, the test database) must not hold up a visible
  block: each one binds every name it uses, as a reader who pastes it alone needs
  (:func:`test_every_python_block_stands_on_its_own`);
* ``console`` blocks run each ``$ command`` (``statekit``/``python`` mean this
  interpreter), check its exit status (0, or what :data:`EXIT_STATUS` says) and match
  the expected output lines in order, whitespace-insensitive, ``...`` matching anything;
* ``nginx`` blocks are checked with ``nginx -t`` when nginx is installed.

Run by hand: ``python tests/test_docs.py docs/migration.md`` with ``STATEKIT_REDIS_URL``
and ``STATEKIT_BLOBS_URL`` set (e.g. under ``statekit dev --``), from a scratch directory
(the guide writes ``app.db``, ``uploads/``, ``migration/`` there) holding links to
``examples`` and ``deploy`` and on ``PYTHONPATH``, as :func:`_run_guide` does. Beside the
README's install it needs pytest, sybil, SQLAlchemy, Flask-Session, Flask-Caching and
httpx (the libraries the guide migrates from, and the checks' client).
"""

from __future__ import annotations

import builtins
import io
import os
import re
import shlex
import shutil
import subprocess
import symtable
import sys
import tempfile
import tokenize
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "migration.md"
#: every guide whose blocks run as printed
GUIDES = [GUIDE, ROOT / "docs" / "starlette.md"]
LANGUAGES = {"python", "console", "nginx"}
#: the exit status of a console command that does not end with 0, by the start of its
#: command line (the guide says why in its text: the audit exits 1 when it finds
#: something, phoenix when state was lost)
EXIT_STATUS = {
    "statekit audit examples/flask_app/before": 1,
    "statekit phoenix examples.flask_app.before.app:app": 1,
}


def _normalize(line: str) -> str:
    return " ".join(line.split())


def _matches(expected: list[str], output: str) -> str | None:
    """None when every expected line matches an output line, in order; else the first
    expected line that does not."""
    actual = [_normalize(line) for line in output.splitlines()]
    i = 0
    for line in expected:
        want = _normalize(line)
        if want in ("", "..."):
            continue
        pattern = re.compile(".*?".join(re.escape(part) for part in want.split("...")) + "$")
        while i < len(actual) and not pattern.match(actual[i]):
            i += 1
        if i == len(actual):
            return line
        i += 1
    return None


def run_console(example: Any) -> None:
    commands: list[tuple[str, list[str]]] = []
    for line in str(example.parsed).splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        elif commands:
            commands[-1][1].append(line)
    assert commands, "a console block without a $ command"
    for command, expected in commands:
        args = [os.path.expandvars(a) for a in shlex.split(command)]
        if args[0] == "statekit":
            args = [sys.executable, "-m", "statekit", *args[1:]]
        elif args[0] == "python":
            args = [sys.executable, *args[1:]]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=240, check=False)  # noqa: S603
        output = proc.stdout + proc.stderr
        status = next((s for start, s in EXIT_STATUS.items() if command.startswith(start)), 0)
        if proc.returncode != status:
            raise AssertionError(
                f"$ {command}\nexit status {proc.returncode}, not {status}\n--- output:\n{output}")
        missing = _matches(expected, output)
        if missing is not None:
            raise AssertionError(f"$ {command}\nexpected line not found: {missing!r}\n--- output:\n{output}")


def check_nginx(example: Any) -> None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(
            f"pid {tmp}/nginx.pid;\nerror_log stderr;\nevents {{}}\nhttp {{\n"
            f"client_body_temp_path {tmp}/cb; proxy_temp_path {tmp}/p; fastcgi_temp_path {tmp}/f;\n"
            f"uwsgi_temp_path {tmp}/u; scgi_temp_path {tmp}/s; access_log off;\n{example.parsed}\n}}\n"
        )
        proc = subprocess.run([nginx, "-t", "-p", tmp, "-c", str(conf)], capture_output=True, text=True,  # noqa: S603
                              timeout=30, check=False)
        assert proc.returncode == 0, proc.stderr


def run_guide(path: Path) -> int:
    from sybil import Document
    from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser

    document = Document.parse(
        str(path), PythonCodeBlockParser(), CodeBlockParser("console", run_console),
        CodeBlockParser("nginx", check_nginx),
    )
    count = 0
    for example in document:
        try:
            example.evaluate()
        except Exception as e:
            print(f"{path}:{example.line}: FAILED: {type(e).__name__}: {e}", flush=True)
            raise
        count += 1
        print(f"{path}:{example.line}: ok", flush=True)
    print(f"{count} examples passed", flush=True)
    return count


def _fences(text: str) -> list[str]:
    """The language of every fenced block (opening fences only)."""
    languages = []
    inside = False
    for line in text.splitlines():
        m = re.match(r"^```(\S*)\s*$", line)
        if m:
            if not inside:
                languages.append(m.group(1))
            inside = not inside
    return languages


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_every_block_is_executable(guide: Path) -> None:
    text = guide.read_text()
    languages = _fences(text)
    assert languages and set(languages) <= LANGUAGES, languages
    from sybil import Document
    from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser

    document = Document.parse(str(guide), PythonCodeBlockParser(), CodeBlockParser("console", run_console),
                              CodeBlockParser("nginx", check_nginx))
    invisible = len(re.findall(r"<!-- invisible-code-block: python", text))
    assert len(list(document)) == len(languages) + invisible


def unbound_names(code: str) -> set[str]:
    """The names *code* uses that it does not bind (assign, import, ``def``, ``class``)
    and that are not builtins: what a reader who pastes the block alone must bring."""
    top = symtable.symtable(code, "<block>", "exec")
    bound = {s.get_name() for s in top.get_symbols()
             if s.is_assigned() or s.is_imported() or s.is_namespace()}
    used: set[str] = set()

    def walk(table: symtable.SymbolTable) -> None:
        for s in table.get_symbols():
            if s.is_referenced() and (table is top or s.is_global()):
                used.add(s.get_name())
        for child in table.get_children():
            walk(child)

    walk(top)
    return used - bound - set(dir(builtins))


def _commented(code: str) -> set[str]:
    """Every word of *code*'s comments."""
    comments = [tok.string for tok in tokenize.generate_tokens(io.StringIO(code).readline)
                if tok.type == tokenize.COMMENT]
    return set(re.findall(r"\w+", " ".join(comments)))


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_every_python_block_stands_on_its_own(guide: Path) -> None:
    """Each visible ``python`` block binds every name it uses, or names it in a comment
    (``# photos: your Table``, ``# BASE_DIR: Django's``): a reader pastes one block into
    a file, and the invisible blocks' setup (``import os``, ``BASE_DIR``) that the guide
    run shares with it is not on the page."""
    text = guide.read_text()
    problems = []
    for m in re.finditer(r"^```python\n(.*?)^```$", text, re.S | re.M):
        code = m.group(1)
        missing = unbound_names(code) - _commented(code)
        if missing:
            problems.append(f"docs/{guide.name}:{text.count(chr(10), 0, m.start()) + 1}: {sorted(missing)}")
    assert not problems, "blocks that use names they neither bind nor explain:\n" + "\n".join(problems)


def test_unbound_names() -> None:
    code = ("import os\nfrom x import y as z\n\n\ndef f(a):\n    return a + b + z + os.sep\n\n\n"
            "class C:\n    m = models.X\n\n    def meth(self):\n        return C, [q for q in w]\n")
    assert unbound_names(code) == {"b", "models", "w"}
    assert _commented("x = photos  # photos: your Table\n") == {"photos", "your", "Table"}


def test_a_console_command_must_end_with_its_exit_status() -> None:
    run_console(SimpleNamespace(parsed="$ python -c 'print(1)'\n1\n"))
    with pytest.raises(AssertionError, match="exit status 3, not 0"):
        run_console(SimpleNamespace(parsed="$ python -c 'import sys; print(1); sys.exit(3)'\n1\n"))


def test_output_matching() -> None:
    out = "a  b\n│ lost uploads │   0 │ of 3 │\nFAIL: x\n"
    assert _matches(["a b", "...lost uploads...│ 0 │...", "FAIL: x"], out) is None
    assert _matches(["FAIL: x", "a b"], out) == "a b"  # order matters
    assert _matches(["│ lost uploads │ 1 │..."], out) is not None


@pytest.mark.redis
@pytest.mark.s3
@pytest.mark.gunicorn
def test_migration_guide_runs(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    import upstream  # here: this file also runs as a script (below), where pytest's path is not set

    run = upstream.report("test_migration_guide_runs", lambda: _run_guide(
        tmp_path, request.getfixturevalue("redis_url"), request.getfixturevalue("s3_url")))
    output = run["output"]
    assert run["returncode"] == 0, output
    blocks = len(_fences(GUIDE.read_text())) + GUIDE.read_text().count("<!-- invisible-code-block: python")
    assert f"{blocks} examples passed" in output, output


def _run_guide(tmp_path: Path, redis_url: str, s3_url: str, guide: Path = GUIDE,
               **extra_env: str) -> dict[str, Any]:
    """*guide* run by sybil in a subprocess, in *tmp_path*: its exit status and output."""
    for name in ("examples", "deploy"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "STATEKIT_REDIS_URL": redis_url, "STATEKIT_BLOBS_URL": s3_url,
           "DATABASE_URL": f"sqlite:///{tmp_path}/demo.sqlite3", "USERS_COUNT_INTERVAL": "4",
           "SECRET_KEY": "docs-test-secret", "PYTHONPATH": str(tmp_path), **extra_env}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    proc = subprocess.run([sys.executable, str(Path(__file__)), str(guide)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=280, check=False)
    return {"returncode": proc.returncode, "output": proc.stdout + proc.stderr}


def _run_guide_in_background(tmp_path: Path, redis_url: str) -> dict[str, Any]:
    """:func:`_run_guide` beside the rest of the suite (conftest.py's background runs,
    tests/upstream.py): the guide's ~25 s subprocess need not be waited for. On the
    background runs' Redis (emptied first: the runs take turns) and an S3 endpoint of
    its own."""
    import redis

    from statekit.embedded import S3Server

    with redis.Redis.from_url(redis_url) as r:
        r.flushall()
    with S3Server() as s3:
        return _run_guide(tmp_path, redis_url, s3.url)


BACKGROUND = {"test_migration_guide_runs": _run_guide_in_background}


@pytest.mark.redis
@pytest.mark.s3
def test_starlette_guide_runs(redis_url: str, s3_url: str, tmp_path: Path) -> None:
    """docs/starlette.md's blocks as printed, with the environment its quick start names;
    its invisible blocks drive the apps through ``httpx.ASGITransport`` with their
    lifespan (a login, the cache, an upload and a refused one, a shared value, health)."""
    guide = GUIDES[1]
    run = _run_guide(tmp_path, redis_url, s3_url, guide, STATEKIT_SECRET_KEYS="docs-test-secret")
    blocks = len(_fences(guide.read_text())) + guide.read_text().count("<!-- invisible-code-block: python")
    assert run["returncode"] == 0, run["output"]
    assert f"{blocks} examples passed" in run["output"], run["output"]


if __name__ == "__main__":
    run_guide(Path(sys.argv[1]).resolve())
