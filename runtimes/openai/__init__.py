"""An OpenAI-compatible server (llama-server, vLLM, SGLang, llama_cpp.server) as a runtime:
greedy next tokens and top-k log-probabilities, and the server's own tokenizer."""

from .runtime import OpenAIRuntime

__all__ = ["OpenAIRuntime"]
