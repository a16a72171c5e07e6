"""Review (issue 18) of ``django_statekit.conf.get_settings``'s memo (13d05cc): what it
keeps must follow the environment the way the uncached reader did, an os.environ
replaced by ``mock.patch("os.environ", ...)`` included (fixed in e3d8104)."""

from __future__ import annotations

import os
from unittest import mock

from django_statekit.conf import get_settings


def test_a_replaced_os_environ_is_seen() -> None:
    before = os.environ.get("STATEKIT_KEY_PREFIX")
    assert get_settings().key_prefix == (before or "statekit")
    with mock.patch("os.environ", {**os.environ, "STATEKIT_KEY_PREFIX": "patched-env"}):
        assert os.environ["STATEKIT_KEY_PREFIX"] == "patched-env"
        assert get_settings().key_prefix == "patched-env"


def test_patch_dict_of_os_environ_is_seen() -> None:
    get_settings()
    with mock.patch.dict(os.environ, {"STATEKIT_KEY_PREFIX": "dict-patched"}):
        assert get_settings().key_prefix == "dict-patched"
    with mock.patch.dict(os.environ, {}, clear=True):
        assert get_settings().key_prefix == "statekit"
