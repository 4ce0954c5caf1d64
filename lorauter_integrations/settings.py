"""Where the project keeps what it makes: converted models, demo stores, evaluation caches."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$LORAUTER_CACHE``, or ``~/.cache/lorauter``; created on first use."""
    root = os.environ.get("LORAUTER_CACHE") or Path.home() / ".cache" / "lorauter"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


__all__ = ["cache_dir"]
