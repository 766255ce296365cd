"""Memory planner: what a runtime needs for a model at a context length, and the largest
context that fits a budget.

    g4c plan MODEL.gguf --memory 12GiB --runtime cpu [--context 8192] [--n-seq 1]

KV: 2 (K and V, both cached even on k_eq_v layers) x KV heads x head dim x element size
per position, full layers at the whole context, sliding layers capped at W, and the last
`shared_kv_layers` layers (E2B/E4B) owning no cache. Weights and scratch come from the
runtime's own `memory_plan`, since where a runtime keeps its weights (a memory map, device
memory, a dequantized copy) is its own business.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from .config import ModelConfig
from .errors import G4CError, ResourceUnavailable

GIB = 1 << 30


@dataclass(frozen=True)
class MemoryPlan:
    runtime: str
    n_ctx: int
    n_seq: int
    weights: int
    kv: int
    scratch: int
    where: str  # "host" or "device"

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.scratch

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total}

    def line(self) -> str:
        return (f"{self.total / GIB:.2f} GiB of {self.where} memory (weights {self.weights / GIB:.2f}, "
                f"KV {self.kv / GIB:.2f}, scratch {self.scratch / GIB:.2f})")


def kv_bytes(cfg: ModelConfig, n_ctx: int, n_seq: int = 1, elt: int = 4, ring_extra: int = 0) -> int:
    """KV cache bytes at a context length, slots as g4c.session.KVPlan assigns them: full
    layers one per position, sliding layers a ring of W + ring_extra (at most n_ctx); the
    last shared_kv_layers layers reuse an earlier layer's cache."""
    from .session import KVPlan

    ring = KVPlan.for_model(cfg, n_ctx, ring_extra).ring
    owners = cfg.layers[: cfg.n_layer - cfg.shared_kv_layers]
    return n_seq * sum(2 * s.n_head_kv * s.head_dim * elt * (ring if s.sliding else n_ctx) for s in owners)


def largest_context(plan_at, memory: int, n_ctx_max: int) -> int:
    """Largest n_ctx with plan_at(n_ctx).total <= memory (plans grow with n_ctx); 0 if none."""
    if plan_at(1).total > memory:
        return 0
    lo, hi = 1, n_ctx_max
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if plan_at(mid).total <= memory:
            lo = mid
        else:
            hi = mid - 1
    return lo


def check_fits(plan_at, n_ctx: int, n_ctx_max: int, available: int, what: str) -> MemoryPlan:
    """The plan at n_ctx, or a ResourceUnavailable (this machine's shortage, not the runtime's
    fault) saying what it needs, what is available and the largest context that fits."""
    plan = plan_at(n_ctx)
    if plan.total > available:
        best = largest_context(plan_at, available, n_ctx_max)
        raise ResourceUnavailable(
            f"{what}: max_context {n_ctx} needs {plan.line()}, but {available / GIB:.2f} GiB are available; "
            + (f"the largest context that fits is {best}" if best else "not even a context of 1 fits"),
            resource=f"{plan.where} memory", needed=plan.total, available=available, where=what)
    return plan


def available_host_memory() -> int:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 1 << 10, "m": 1e6, "mb": 1e6, "mib": 1 << 20,
          "g": 1e9, "gb": 1e9, "gib": 1 << 30, "t": 1e12, "tb": 1e12, "tib": 1 << 40}


def parse_bytes(text: str) -> int:
    """A memory size written with its unit (12GiB, 80GB, 512B) in bytes. The unit is required:
    a bare 12 would be read as 12 bytes where 12 GiB was meant."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]+)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise G4CError(f"cannot read a memory size from {text!r}: write a number and a unit "
                       "(B, KB, KiB, MB, MiB, GB, GiB, TB, TiB), e.g. 12GiB")
    size = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not 1 <= size <= 1 << 64:  # the upper bound keeps an overlong number from becoming inf
        raise G4CError(f"memory size {text!r} is not between 1 byte and 16 EiB")
    return int(size)
