"""Review (issue 18) of the signed-pickle codec's prepared MAC (9280496): the codec
object itself stays an ordinary value, as it was: ``copy.deepcopy`` (what
``dataclasses.asdict``/``replace`` of a config holding it and many settings helpers do)
and pickling give a codec that reads what the original wrote."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable

import pytest

from statekit.serializers import SignedPickleSerializer


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda c: pickle.loads(pickle.dumps(c))],  # noqa: S301
                         ids=["deepcopy", "pickle"])
def test_a_copied_codec_reads_what_the_original_wrote(
        clone: Callable[[SignedPickleSerializer], SignedPickleSerializer]) -> None:
    codec = SignedPickleSerializer(["new-key", "old-key"])
    written = codec.dumps({"n": 1, "t": (1, 2)})
    copied = clone(codec)
    assert copied.loads(written) == {"n": 1, "t": (1, 2)}
    assert codec.loads(copied.dumps([3])) == [3]
