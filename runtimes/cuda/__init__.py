"""CUDA runtime on CuPy RawModule kernels; cupy is imported only when the runtime is used."""

from .runtime import CudaRuntime

__all__ = ["CudaRuntime"]
