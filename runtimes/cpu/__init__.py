"""numpy float32 runtime: the baseline every other runtime is read beside."""

from .runtime import CpuRuntime

__all__ = ["CpuRuntime"]
