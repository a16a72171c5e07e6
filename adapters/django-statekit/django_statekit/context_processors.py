"""Template context processors for statekit.

Add ``"django_statekit.context_processors.shared_values"`` to
``TEMPLATES[...]["OPTIONS"]["context_processors"]`` to make every shared value
available as ``{{ shared.<name> }}`` in templates rendered with a request.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from . import broadcast

__all__ = ["shared_values"]


def shared_values(request: HttpRequest) -> dict[str, Any]:
    """``{"shared": SharedValues}``: values are read lazily, only those a template uses."""
    return {"shared": broadcast.shared_values()}
