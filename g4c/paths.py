"""Where the suite keeps what it builds once and reuses: fixtures, SPIR-V, emulator builds."""

from __future__ import annotations

import os
import re
from contextlib import suppress
from pathlib import Path


def cache_dir() -> Path:
    """$G4C_CACHE, else ~/.cache/gemma4-conformance."""
    return Path(os.environ.get("G4C_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gemma4-conformance"))


_TEMP = re.compile(r"\..+\.([1-9][0-9]{0,8})\.tmp")


def temp_path(path: Path) -> Path:
    """Where this process writes `path` before renaming it into place: hidden, and named after
    its pid for remove_stale_temps."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove_stale_temps(directory: Path) -> list[Path]:
    """Remove the temp files (temp_path's names) in `directory` whose writer no longer runs:
    a SIGKILLed `g4c fixture 12b` leaves up to 7 GB that nothing else would remove. A live
    writer's file stays (a concurrent test may be writing it), and so does one whose pid now
    belongs to another process. Returns the files removed."""
    removed = []
    for f in directory.glob(".*.tmp"):
        m = _TEMP.fullmatch(f.name)
        if m is None or _running(int(m.group(1))):
            continue
        # best effort: another process may have removed it first, or the cache may be
        # read-only (its fixtures still serve; the file goes when the cache is writable)
        with suppress(OSError):
            f.unlink()
            removed.append(f)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # running, as another user
        pass
    return True
