"""Review 19 follow-ups for the Flask adapter: what a Flask app brings from its cookie
sessions (Flask's ``TaggedJSONSerializer`` keeps ``Markup``: flask/json/tag.py's
``TagMarkup``) on a real Flask app and a real Redis."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from flask import flash, render_template_string
from markupsafe import Markup
from test_flask_sessions import make_app

from statekit.serializers import JSONSerializer, MsgpackSerializer

pytestmark = pytest.mark.redis


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_a_markup_flash_message_is_shown_as_markup(redis_url: str, codec: str) -> None:
    """``flash(Markup("<b>saved</b>"))``, then the next page renders it unescaped,
    as with Flask's cookie sessions (it was a 500: the codec refused Markup)."""
    app = make_app(redis_url, STATEKIT_SESSION_CODEC=codec)

    @app.post("/save")
    def save() -> Any:
        flash(Markup("<b>saved</b>"))
        return "ok"

    @app.get("/show")
    def show() -> Any:
        return render_template_string("{% for m in get_flashed_messages() %}{{ m }}{% endfor %}")

    client = app.test_client()
    assert client.post("/save").status_code == 200
    response = client.get("/show")
    assert response.status_code == 200
    assert response.get_data(as_text=True) == "<b>saved</b>"  # not &lt;b&gt;: still Markup


@pytest.mark.parametrize("codec", [JSONSerializer, MsgpackSerializer])
def test_markup_round_trips_in_the_session_codecs(codec: type) -> None:
    value = {"m": Markup("<i>x</i>"), "s": "<i>x</i>", "l": [Markup("a & b")]}
    back = codec().loads(codec().dumps(value))
    assert back == value
    assert type(back["m"]) is Markup and type(back["s"]) is str and type(back["l"][0]) is Markup


def test_a_reader_without_markupsafe_gets_a_clear_error() -> None:
    """A process where markupsafe cannot be imported (a worker without Flask) reads
    a stored Markup as a SerializationError naming markupsafe, not an ImportError."""
    stored = JSONSerializer().dumps({"m": Markup("<b>x</b>")})
    code = (
        "import sys; sys.modules['markupsafe'] = None\n"
        "from statekit.serializers import JSONSerializer\n"
        "from statekit.errors import SerializationError\n"
        "assert JSONSerializer().loads(b'{\"a\":1}') == {'a': 1}\n"
        "try:\n"
        f"    JSONSerializer().loads({stored!r})\n"
        "except SerializationError as e:\n"
        "    print(type(e).__name__, repr(e.__cause__))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("SerializationError ") and "pip install markupsafe" in out.stdout, out.stdout
