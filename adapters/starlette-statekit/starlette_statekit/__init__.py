"""Starlette and FastAPI adapter for statekit (work in progress: see issue 18)."""

from __future__ import annotations

__all__: list[str] = []
