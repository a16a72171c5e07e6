"""A session store whose codec is a JSON codec with tags of its own
(:class:`~statekit.serializers.WebJSONSerializer`) reads back what it stored: the
store's shared fast decoder serves the plain JSON codec only."""

from __future__ import annotations

from markupsafe import Markup

from statekit.serializers import WebJSONSerializer
from statekit.sessions import SessionStore


def test_web_json_values_come_back() -> None:
    store = SessionStore("memory://codec-subclass", secret_keys=["k"], codec=WebJSONSerializer())
    s = store.create({"m": Markup("<b>hi</b>"), "n": 1, "when": {"a": [1, 2]}})
    loaded = store.load(s.sid)
    assert loaded is not None
    assert loaded["m"] == Markup("<b>hi</b>") and isinstance(loaded["m"], Markup)
    assert loaded["n"] == 1 and loaded["when"] == {"a": [1, 2]}
