"""The shape of django_statekit's middleware: sync and async capable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest

__all__ = ["HybridMiddleware"]


class HybridMiddleware:
    """A middleware that is sync or async, whichever the chain below it is (Django's
    "sync and async capable"): under ASGI it runs on the event loop, with no thread hop
    of its own. A subclass's ``__call__`` returns ``self.__acall__(request)`` when
    :attr:`is_async`."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        raise NotImplementedError("HybridMiddleware.__call__")
