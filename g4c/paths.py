"""Where the suite keeps what it builds once and reuses: fixtures, SPIR-V, emulator builds."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$G4C_CACHE, else ~/.cache/gemma4-conformance."""
    return Path(os.environ.get("G4C_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gemma4-conformance"))
