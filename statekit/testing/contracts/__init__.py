"""One contract suite per capability (``cache``, ``sessions``, ``blobs``,
``broadcast``): pytest test classes that a backend's test module subclasses, giving
the fixture that builds the backend. The project's own backends run exactly these.
"""

from __future__ import annotations

__all__: list[str] = []
