"""Where a result came from: the suite's commit (and whether its tree was dirty), the date,
package versions, the machine, and each runtime's device and driver.

Every results file carries this under "provenance" (conformance results, benchmark JSON,
the device scripts' JSON), so a report can say per column which code and which device
produced it, and mark a run made on other code than the report's own.

    python -m g4c.provenance            the record of this checkout and machine, as JSON
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1]  # the checkout (or site-packages when installed)
PACKAGES = ("gemma4-conformance", "numpy", "gguf", "pytest", "cupy-cuda13x", "vulkan", "pyopencl", "llama-cpp-python")


def commit() -> dict:
    """{"commit", "dirty"} of the checkout the suite runs from. Where it is no git checkout (a
    copy of the tree on a GPU machine, an installed wheel) G4C_COMMIT and G4C_DIRTY=0|1 say
    it, set by whoever made the copy; else both are None (the version is in the packages)."""
    def git(*args) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(SOURCE), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != SOURCE:
        dirty = os.environ.get("G4C_DIRTY")
        return {"commit": os.environ.get("G4C_COMMIT") or None, "dirty": None if dirty is None else dirty == "1"}
    status = git("status", "--porcelain")  # an untracked test or runtime module is a change too
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def require_commit(what: str) -> None:
    """Stop a GPU-machine script whose results would not say which code made them."""
    if commit()["commit"] is None:
        raise SystemExit(f"{what}: this tree is no git checkout; run it as G4C_COMMIT=<commit> G4C_DIRTY=0|1 ... "
                         "(the commit and state of the tree that was copied here), so its results record them")


def packages() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def cpu_name() -> str:
    """The processor's model name (/proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    return {"label": os.environ.get("G4C_MACHINE") or platform.node(), "node": platform.node(), "cpu": cpu_name(),
            "cpus": os.cpu_count(), "system": f"{platform.system()} {platform.release()}",
            "python": platform.python_version()}


def record(runtimes: dict | None = None) -> dict:
    """The provenance of a run: code, date, packages, machine, and per runtime its device and
    driver (its settings(), where it declares that method and is available)."""
    from .runtime import has_method

    rec = {**commit(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "packages": packages(),
           "machine": machine(), "runtimes": {}}
    for name, rt in (runtimes or {}).items():
        av = rt.availability()
        entry = {"available": av.ok, "reason": av.reason}
        if av.ok and has_method(rt, "settings"):
            entry["settings"] = rt.settings()
        rec["runtimes"][name] = entry
    return rec


if __name__ == "__main__":
    print(json.dumps(record(), indent=1))
