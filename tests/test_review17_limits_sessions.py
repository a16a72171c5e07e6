"""Review 17, "a limit holds on every path": sessions never use pickle.

``SessionStore(codec="signed-pickle")`` (``STATEKIT_SESSION_CODEC=signed-pickle`` in the
Flask and Django adapters) is refused, as it should be, but with the codec's own
complaint: "the signed-pickle codec needs secret keys (STATEKIT_SECRET_KEYS or
secret_keys=)", to a store given its secret keys. The refusal now says what it is.
"""

from __future__ import annotations

import pytest

from statekit.errors import ConfigError
from statekit.serializers import get_serializer
from statekit.sessions import AsyncSessionStore, SessionStore


@pytest.mark.parametrize("store_class", [SessionStore, AsyncSessionStore])
@pytest.mark.parametrize("codec", ["signed-pickle", "pickle"])
def test_a_pickle_codec_is_refused_for_what_it_is(store_class: type, codec: str) -> None:
    with pytest.raises(ConfigError, match="sessions never use pickle"):
        store_class("memory://review17-pickle", secret_keys=["k"], codec=codec)


def test_a_ready_pickle_serializer_is_refused_too() -> None:
    pickle = get_serializer("signed-pickle", secret_keys=["k"])
    with pytest.raises(ConfigError, match="sessions never use pickle"):
        SessionStore("memory://review17-pickle", secret_keys=["k"], codec=pickle)
