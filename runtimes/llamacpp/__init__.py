"""llama.cpp through llama-cpp-python: the first outside engine under test, and the parity oracle."""

from .runtime import LlamaCppRuntime

__all__ = ["LlamaCppRuntime"]
