"""Reading a local HTTP endpoint in tests."""

from __future__ import annotations

import urllib.request
from typing import Optional


def fetch(port: int, path: str) -> Optional[str]:
    """The body of http://127.0.0.1:PORT/PATH, or None while nothing answers there."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.read().decode()
    except OSError:
        return None
