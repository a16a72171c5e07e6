"""One exception hierarchy for everything statekit raises.

Catch :class:`StatekitError` to handle any statekit failure; catch a subclass to
handle one kind. Errors that wrap a lower-level exception (redis-py, botocore) keep
it as ``__cause__``.
"""

from __future__ import annotations

import pickle  # noqa: S403 - for PicklingError only; nothing is unpickled here

__all__ = [
    "BackendUnavailable",
    "BlobError",
    "BlobExists",
    "BlobNotFound",
    "BlobTooLarge",
    "BroadcastError",
    "ConfigError",
    "ContentTypeMismatch",
    "DisallowedContentType",
    "InvalidKey",
    "LockError",
    "SerializationError",
    "SessionError",
    "SessionExpired",
    "SignatureError",
    "StaleToken",
    "StatekitError",
    "UnencodableValue",
]


class StatekitError(Exception):
    """Base class of every error statekit raises on purpose."""


class ConfigError(StatekitError, ValueError):
    """A setting, URL or option is malformed, unknown, or needs an extra that is not
    installed. The message names the bad part and, for a missing extra, the
    ``pip install`` command that fixes it."""


class BackendUnavailable(StatekitError):
    """A backend (Redis, S3, the filesystem) could not be reached, did not answer
    within its timeout, refused the credentials (the message then names
    authentication), or could not serve the call (a Redis replica or a demoted
    master during a failover, a server loading its data).

    A write is atomic: it was applied fully or not at all, and never twice (statekit
    never sends a write again once it went out). When the reply was lost after
    sending (the message says the outcome is unknown) it may have been applied
    once; otherwise nothing was written. Retrying an idempotent write is safe; retry
    a non-idempotent one (an ``incr``) only if applying it twice is acceptable."""


class SerializationError(StatekitError, TypeError):
    """A value cannot be encoded, or stored bytes cannot be decoded, by the codec.

    On encode the message names the type (and, for sessions, the key); on decode it
    says which codec refused the payload. A refused payload is never executed."""


class UnencodableValue(SerializationError, pickle.PicklingError):
    """A value a cache's codec cannot encode. Django's and cachelib's cache contracts
    name a ``pickle.PickleError`` for it (code written for their backends catches that);
    this is one, and a :class:`SerializationError` too. Raised by the Django and cachelib
    adapters (``django_statekit.cache.UnencodableValue`` and
    ``statekit.compat.cachelib.UnencodableValue`` are this class)."""



class SignatureError(SerializationError):
    """A signed payload (signed pickle) failed verification: it was tampered with,
    truncated, or signed with a key that is not configured."""


class InvalidKey(StatekitError, ValueError):
    """A key (cache key, blob key, session key) is empty, too long, or contains
    characters the backend cannot store safely."""


class LockError(StatekitError):
    """A lock could not be acquired within its timeout, or was released by a holder
    that no longer owned it."""


class SessionError(StatekitError):
    """Base class for session failures other than backend outages."""


class SessionExpired(SessionError):
    """The session passed its idle timeout or absolute lifetime."""


class BlobError(StatekitError):
    """Base class for blob-store failures other than backend outages."""


class BlobNotFound(BlobError, KeyError):
    """No blob exists under the given key."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else "blob not found"


class BlobExists(BlobError):
    """A blob already exists under the key; statekit never overwrites silently."""


class BlobTooLarge(BlobError):
    """The upload crossed ``max_size``; it was aborted and nothing is visible."""


class DisallowedContentType(BlobError):
    """The sniffed or declared content type is not in the allow-list."""


class ContentTypeMismatch(BlobError):
    """The sniffed content type contradicts the declared one (a PNG sent as
    ``text/html``, HTML named ``photo.png``)."""


class BroadcastError(StatekitError):
    """Base class for broadcast failures."""


class StaleToken(BroadcastError):
    """A publish carried a fencing token older than the current lease holder's:
    a paused former leader tried to publish over the new one and was refused."""
