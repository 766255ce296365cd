"""OpenCL runtime: the forward in OpenCL C kernels (kernels/*.cl), through pyopencl."""

from .runtime import OpenCLRuntime

__all__ = ["OpenCLRuntime"]
