"""Review 17's closing read: ``config.parse_size`` is the one check of a byte count
(the adapters' size settings, URL size options, blob limits: ``BlobStore``'s
``max_size`` goes through it without text). It returned ``True`` as a size (a limit of
1 byte, the defect the limits audit fixed for ``put``) and raised a bare TypeError
from its pattern for a float or ``None``."""

from __future__ import annotations

import pytest

from statekit.config import parse_size
from statekit.errors import ConfigError


@pytest.mark.parametrize("bad", [True, False, 1.5, None, [1]])
def test_what_is_no_byte_count_is_a_config_error_naming_it(bad: object) -> None:
    with pytest.raises(ConfigError, match="STATEKIT_BLOBS_MAX_SIZE=.* must be a whole number of bytes"):
        parse_size(bad, name="STATEKIT_BLOBS_MAX_SIZE")  # type: ignore[arg-type]


def test_text_is_a_size_only_where_text_is_taken() -> None:
    assert parse_size("10MiB", name="x") == parse_size(10 << 20, name="x", text=False) == 10 << 20
    with pytest.raises(ConfigError, match="max_size='10MiB' must be a whole number of bytes, 0 or more$"):
        parse_size("10MiB", name="max_size", text=False)
    with pytest.raises(ConfigError, match="must not be negative"):
        parse_size(-1, name="max_size", text=False)
