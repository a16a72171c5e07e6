"""statekit.errors: one documented hierarchy under StatekitError."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil

import pytest

import statekit
from statekit import errors
from statekit.errors import (
    BackendUnavailable,
    BlobNotFound,
    ConfigError,
    SerializationError,
    SignatureError,
    StatekitError,
)

ERROR_CLASSES = [
    value for value in vars(errors).values()
    if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == errors.__name__
]


def test_errors_all_lists_every_class() -> None:
    assert sorted(errors.__all__) == sorted(cls.__name__ for cls in ERROR_CLASSES)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_is_a_documented_statekit_error(cls: type[BaseException]) -> None:
    assert issubclass(cls, StatekitError)
    doc = inspect.getdoc(cls)
    assert doc and doc != inspect.getdoc(Exception) and len(doc) > 20, f"{cls.__name__} has no docstring"
    if cls is not StatekitError:
        assert cls.__doc__ != StatekitError.__doc__


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_errors_survive_pickling_with_their_message(cls: type[BaseException]) -> None:
    # errors cross process boundaries (gunicorn workers, multiprocessing)
    err = cls("something went wrong")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert str(back) == "something went wrong"


def test_hierarchy_matches_the_spec() -> None:
    for cls in (ConfigError, BackendUnavailable, SerializationError):
        assert cls.__bases__[0] is StatekitError
    assert issubclass(SignatureError, SerializationError)
    # stdlib bases keep plain `except ValueError` / `except TypeError` / `except KeyError` working
    assert issubclass(ConfigError, ValueError)
    assert issubclass(SerializationError, TypeError)
    assert issubclass(BlobNotFound, KeyError)
    assert not issubclass(BackendUnavailable, (ValueError, TypeError))


def test_blob_not_found_message_is_not_quoted() -> None:
    assert str(BlobNotFound("no blob 'a/b'")) == "no blob 'a/b'"
    assert str(BlobNotFound()) == "blob not found"


def test_cause_is_kept() -> None:
    try:
        try:
            raise ConnectionRefusedError("refused")
        except OSError as e:
            raise BackendUnavailable("Redis unavailable") from e
    except StatekitError as e:
        assert isinstance(e.__cause__, ConnectionRefusedError)


def test_top_level_exports_the_core_errors() -> None:
    core = ("StatekitError", "ConfigError", "BackendUnavailable", "SerializationError", "SignatureError")
    for name in core:
        assert getattr(statekit, name) is getattr(errors, name)


def _public_exception_classes() -> list[tuple[str, type[BaseException]]]:
    found = []
    for info in pkgutil.walk_packages(statekit.__path__, "statekit."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                not name.startswith("_")
                and inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == info.name
            ):
                found.append((f"{info.name}.{name}", value))
    return found


def test_every_public_exception_anywhere_in_statekit_is_a_statekit_error() -> None:
    strays = [name for name, cls in _public_exception_classes() if not issubclass(cls, StatekitError)]
    assert strays == []
