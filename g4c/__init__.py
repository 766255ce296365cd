"""gemma4-conformance: conformance and benchmark suite for Gemma 4 inference engines."""

__version__ = "0.1.0"
