"""An engine in any language, as a child process speaking the engine protocol
(docs/engine-protocol.md) over its stdin and stdout."""

from .runtime import ProcessRuntime

__all__ = ["ProcessRuntime"]
