"""The engine protocol (docs/engine-protocol.md), version 1: the messages both sides read and
write, and the errors they carry.

A message is one line of UTF-8 JSON (an object, ended by a newline) followed by the binary
frames its "frames" list declares, in that order: each frame is an unsigned 64-bit
little-endian byte count, then that many bytes, the array in C order, little-endian. The
suite's side is g4c.runtimes.process, the Python engine's side g4c.serve; both use `encode`
and `read` here, so neither can drift from the other.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .errors import (DeviceUnavailableError, G4CError, GGUFFormatError, InputError, ResourceUnavailable,
                     UnsupportedModelError, UnsupportedQuantError)

VERSION = 1
DTYPES = {"f32": np.dtype("<f4"), "i32": np.dtype("<i4"), "u8": np.dtype("u1")}
PREFIX = struct.Struct("<Q")  # a frame's byte count
MAX_LINE = 64 << 20  # a header line longer than this is garbage, not a message


class EngineError(G4CError):
    """An engine behind the process boundary crashed, hung, broke the protocol or failed
    inside; the message names the request and ends with the tail of the engine's stderr."""


class ProtocolError(EngineError):
    """A message that does not follow the protocol: not JSON, a frame of the wrong size."""


# error kinds on the wire and the classes they stand for, a subclass before its base: an
# engine's refusal reaches a test as the same exception an in-process runtime raises
ERROR_KINDS: dict[str, type[G4CError]] = {
    "unsupported_quant": UnsupportedQuantError,
    "unsupported_model": UnsupportedModelError,
    "format": GGUFFormatError,
    "device_unavailable": DeviceUnavailableError,
    "input": InputError,
    "resource": ResourceUnavailable,
    "protocol": ProtocolError,
    "error": G4CError,
}
RESOURCE_FIELDS = ("resource", "needed", "available", "where")


def error_body(exc: BaseException) -> dict:
    """The "error" object of a response for an exception: its kind ("internal" for one outside
    the suite's hierarchy: a bug, not a verdict on the input) and message."""
    kind = next((k for k, cls in ERROR_KINDS.items() if isinstance(exc, cls)), "internal")
    message = str(exc) if kind != "internal" else f"{type(exc).__name__}: {exc}"
    body = {"kind": kind, "message": message}
    if isinstance(exc, ResourceUnavailable):
        body.update({k: getattr(exc, k) for k in RESOURCE_FIELDS})
    return body


def error_from(body, what: str) -> G4CError:
    """The exception an engine's error response stands for. Errors about the input keep the
    engine's message as it is (tests match on it, as on an in-process runtime's); an internal
    or unknown kind becomes an EngineError naming the request (`what`)."""
    if not isinstance(body, dict) or not isinstance(body.get("message"), str):
        return ProtocolError(f"{what}: the response has ok false but no error object with a message: {body!r:.300}")
    kind, message = body.get("kind"), body["message"]
    cls = ERROR_KINDS.get(kind)
    if cls is ResourceUnavailable:
        return ResourceUnavailable(message, resource=str(body.get("resource", "")), needed=_int(body.get("needed")),
                                   available=_int(body.get("available")), where=str(body.get("where", "")))
    if cls is None or cls is ProtocolError:
        return EngineError(f"{what} failed inside the engine ({kind}): {message}")
    return cls(message)


def _int(v) -> int:
    return v if isinstance(v, int) else 0


@dataclass
class Message:
    """One decoded message: its JSON header and its frames, each (descriptor, array)."""

    header: dict
    frames: list[tuple[dict, np.ndarray]] = field(default_factory=list)

    def array(self, name: str) -> np.ndarray:
        return next(a for d, a in self.frames if d["name"] == name)


def encode(header: dict, frames: Sequence[tuple[dict, np.ndarray]] = ()) -> list[bytes | memoryview]:
    """The chunks of one message, to be written in order: the header line (with "frames"
    declared from the arrays; each descriptor dict gives at least "name") and each frame's
    prefix and bytes. Arrays must be float32, int32 or uint8."""
    descs, data = [], []
    for desc, arr in frames:
        arr = np.asarray(arr)
        code = next((c for c, dt in DTYPES.items() if arr.dtype.kind == dt.kind and arr.dtype.itemsize == dt.itemsize), None)
        if code is None:
            raise ProtocolError(f"frame {desc.get('name')!r}: dtype {arr.dtype} has no protocol type ({', '.join(DTYPES)})")
        arr = np.ascontiguousarray(arr, DTYPES[code])
        descs.append({**desc, "dtype": code, "shape": list(arr.shape)})
        data.append(arr)
    line = json.dumps({**header, "frames": descs} if descs else header, separators=(",", ":"), allow_nan=False)
    chunks: list[bytes | memoryview] = [line.encode() + b"\n"]
    for arr in data:
        chunks += [PREFIX.pack(arr.nbytes), memoryview(arr.reshape(-1)).cast("B")]
    return chunks


def read(readline: Callable[[], bytes], read_exact: Callable[[int], bytes | bytearray],
         check: Callable[[dict, list[dict]], None] | None = None) -> Message | None:
    """The next message, or None at the end of the stream before one begins.

    readline() returns a line with its newline (without one only at the end of the stream);
    read_exact(n) returns n bytes, fewer only at the end. check(header, descriptors) may
    refuse what is declared (raising ProtocolError) before any frame is read. Raises
    ProtocolError naming what is wrong."""
    line = readline()
    if not line:
        return None
    if not line.endswith(b"\n"):
        raise ProtocolError(f"the stream ended inside a header line: {_shown(line)}")
    try:
        header = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"not a JSON line ({e}): {_shown(line)}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"a message must be a JSON object: {_shown(line)}")
    descs = header.get("frames", [])
    if not isinstance(descs, list):
        raise ProtocolError(f"\"frames\" must be a list of frame descriptors: {_shown(line)}")
    for i, d in enumerate(descs):
        _check_descriptor(i, d)
    if check is not None:
        check(header, descs)
    msg = Message(header)
    for d in descs:
        prefix = read_exact(PREFIX.size)
        if len(prefix) < PREFIX.size:
            raise ProtocolError(f"the stream ended before frame {d['name']!r}'s byte count")
        (count,) = PREFIX.unpack(prefix)
        dtype = DTYPES[d["dtype"]]
        want = math.prod(d["shape"]) * dtype.itemsize
        if count != want:
            raise ProtocolError(f"frame {d['name']!r}: its byte count is {count}, but {d['dtype']} of shape "
                                f"{d['shape']} is {want} bytes")
        data = read_exact(count)
        if len(data) < count:
            raise ProtocolError(f"the stream ended inside frame {d['name']!r}: {len(data)} of {count} bytes")
        msg.frames.append((d, np.frombuffer(data, dtype).reshape(d["shape"])))
    return msg


def _check_descriptor(i: int, d) -> None:
    if not (isinstance(d, dict) and isinstance(d.get("name"), str) and d.get("dtype") in DTYPES
            and isinstance(d.get("shape"), list)
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in d["shape"])):
        raise ProtocolError(f"frame descriptor {i} must be {{\"name\": str, \"dtype\": one of {', '.join(DTYPES)}, "
                            f"\"shape\": [non-negative ints]}}, got {json.dumps(d)[:300]}")


def _shown(line: bytes) -> str:
    """A line as an error message shows it: decoded, cut to 300 characters."""
    text = line.decode("utf-8", "replace").rstrip("\n")
    return repr(text[:300]) + (f" ... ({len(text)} characters)" if len(text) > 300 else "")


def op_output_shape(case) -> tuple[int, ...]:
    """The output shape of an op case (g4c.opcases.OpCase documents each)."""
    if case.op == "dequantize":
        return (case.rows, case.cols)
    if case.op in ("matvec", "matmul"):
        return (case.n, case.rows)
    if case.op in ("rms_norm", "rope", "attention"):
        return (case.n, case.heads, case.d)
    return (case.n, case.cols)
