"""g4c serve: a registered runtime behind the engine protocol (docs/engine-protocol.md) on
stdin and stdout, for the suite's `process` runtime to run as it runs an engine in any
other language.

    pytest conformance --runtime process --engine "python -m g4c.serve --runtime cpu"

Stdout carries the protocol and nothing else: whatever else writes to it (a print, a C
library) goes to stderr. It ends at the shutdown request or at the end of stdin.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

import numpy as np

from . import protocol
from .errors import DeviceUnavailableError, G4CError
from .protocol import ProtocolError

_REQUIRED = object()


def add_parser(sub) -> None:
    _arguments(sub.add_parser("serve", help="speak the engine protocol on stdin/stdout for a registered runtime "
                                            "(an engine for --runtime process)"))


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", default="cpu", help="the runtime to serve (default: %(default)s)")


def serve(args) -> int:
    """Answer requests on stdin until shutdown or its end (or the suite's end of the pipe); 0
    then, 1 after a malformed message (the stream cannot be followed past it). Raises
    G4CError for an unknown runtime."""
    from .runtime import get

    if args.runtime == "process":
        raise G4CError("serve --runtime process would serve the protocol through itself: name the runtime to run "
                       "(e.g. --runtime cpu)")
    rt = get(args.runtime)
    try:
        return Server(rt, args.runtime, protocol_stdout()).run(sys.stdin.buffer)
    except BrokenPipeError:  # the suite went away mid-response: nobody is left to answer
        return 0


def protocol_stdout():
    """A handle of its own on stdout for the protocol (binary, written by Server.send); fd 1
    and sys.stdout then point at stderr, so that a stray print (ours, a runtime's, a C
    library's) cannot corrupt the stream. For any engine written in Python."""
    sys.stdout.flush()
    fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(fd, "wb")


class Server:
    """One runtime's sessions by id, and the handler of each request."""

    def __init__(self, runtime, name: str, out):
        self.rt, self.name, self.out = runtime, name, out
        self.sessions: dict[int, object] = {}
        self.models: dict[str, tuple[tuple, object]] = {}  # path -> (its stat when opened, Model)
        self.next_session = 1

    def run(self, inp) -> int:
        while True:
            try:
                msg = protocol.read(inp.readline, inp.read)
            except ProtocolError as e:
                self.send({"id": None, "ok": False, "error": protocol.error_body(e)})
                return 1
            if msg is None:
                return 0
            header = msg.header
            name = header.get("request")
            try:
                handler = getattr(self, f"on_{name}", None) if isinstance(name, str) else None
                if handler is None:
                    raise ProtocolError(f"unknown request {name!r} (this engine answers: {', '.join(self.requests())})")
                reply, frames = handler(header, msg)
            except Exception as e:  # every failure is an answer; the engine keeps serving
                if not isinstance(e, G4CError):
                    traceback.print_exc(file=sys.stderr)
                self.send({"id": header.get("id"), "ok": False, "error": protocol.error_body(e)})
                continue
            self.send({"id": header.get("id"), "ok": True, **reply}, frames)
            if name == "shutdown":
                return 0

    def send(self, header: dict, frames=()) -> None:
        for chunk in protocol.encode(header, frames):
            self.out.write(chunk)
        self.out.flush()

    @classmethod
    def requests(cls) -> list[str]:
        return [n.removeprefix("on_") for n in dir(cls) if n.startswith("on_")]

    # -- requests ------------------------------------------------------------------------------
    def on_hello(self, req, msg):
        from . import __version__
        from .runtime import backend, capabilities, has_method

        asked = field(req, "protocol", int)
        if asked != protocol.VERSION:
            raise ProtocolError(f"this engine speaks protocol {protocol.VERSION}, the suite asked for {asked}")
        av = self.rt.availability()
        if not av.ok:
            raise DeviceUnavailableError(f"runtime {self.name} is unavailable: {av.reason}")
        caps = capabilities(self.rt)
        declared = {
            "precision": caps.precision,
            "trace": caps.trace,
            "weight_types": None if caps.weight_types is None else sorted(caps.weight_types),
            "ops": sorted(caps.ops),
            "departures": [{"test": d.case.test, "params": {k: list(v) for k, v in d.case.params}, "spec": d.spec,
                            "reason": d.reason} for d in caps.departures],
            "backend": backend(self.rt),
        }
        settings = self.rt.settings() if has_method(self.rt, "settings") else {}
        return {"engine": self.name, "version": f"g4c serve {__version__}", "protocol": protocol.VERSION,
                "capabilities": declared, "settings": _plain(settings)}, ()

    def on_load(self, req, msg):
        path, max_context = field(req, "model", str), field(req, "max_context", int)
        n_seq, trace = field(req, "n_seq", int, 1), field(req, "trace", bool, False)
        sess = self.rt.load(self.model(path), max_context, n_seq, trace=trace)
        sid, self.next_session = self.next_session, self.next_session + 1
        self.sessions[sid] = sess
        return {"session": sid}, ()

    def on_prefill(self, req, msg):
        logits = self.session(req).prefill(field(req, "tokens", list), field(req, "start_pos", int, 0),
                                           field(req, "seq", int, 0), field(req, "all_logits", bool, True))
        return {}, [_f32("logits", logits)]

    def on_decode(self, req, msg):
        return {}, [_f32("logits", self.session(req).decode(field(req, "tokens", list)))]

    def on_logits(self, req, msg):
        return {}, [_f32("logits", self.session(req).logits)]

    def on_reset(self, req, msg):
        self.session(req).reset(field(req, "seq", (int, type(None)), None))
        return {}, ()

    def on_trace(self, req, msg):
        trace = self.session(req).trace
        if trace is None:
            raise ProtocolError(f"session {req['session']} was loaded without trace")
        return {}, [({"name": op, "layer": int(layer)}, np.asarray(a, np.float32)) for (layer, op), a in trace.items()]

    def on_unload(self, req, msg):
        self.session(req)
        del self.sessions[req["session"]]
        return {}, ()

    def on_op(self, req, msg):
        from .opcases import OpCase
        from .runtime import capabilities

        fields = field(req, "case", dict)
        try:
            case = OpCase(**fields)
        except (TypeError, ValueError) as e:
            raise ProtocolError(f"op: \"case\" is not an op case ({e})") from None
        if "case_id" in req and req["case_id"] != case.id:
            raise ProtocolError(f"op: case_id {req['case_id']!r} does not match the case's fields ({case.id})")
        if case.op not in capabilities(self.rt).ops:
            raise ProtocolError(f"op: runtime {self.name} declares no op-level {case.op}")
        inputs = {d["name"]: a for d, a in msg.frames}
        out, seconds = self.rt.run_op(case, inputs, field(req, "repeat", int, 0))
        return {"seconds": [float(s) for s in seconds]}, [_f32("output", out)]

    def on_shutdown(self, req, msg):
        return {}, ()

    # -- helpers -------------------------------------------------------------------------------
    def session(self, req):
        sid = field(req, "session", int)
        if sid not in self.sessions:
            raise ProtocolError(f"{req.get('request')}: no session {sid} (never loaded, or unloaded)")
        return self.sessions[sid]

    def model(self, path: str):
        """The model at path, opened once while the file stays the same (as the suite's own
        fixture cache holds one Model per file)."""
        from .model import Model

        try:
            st = os.stat(path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = None  # Model() names the path and why it cannot be read
        held = self.models.get(path)
        if held is None or held[0] != stamp:
            self.models[path] = (stamp, Model(path))
        return self.models[path][1]


def field(req: dict, key: str, kind, default=_REQUIRED):
    """req[key], checked against kind (a type or tuple of types; an int is never a bool), or the
    default when absent; ProtocolError naming the request and field otherwise."""
    if key not in req:
        if default is _REQUIRED:
            raise ProtocolError(f"{req.get('request')}: field {key!r} is missing")
        return default
    value = req[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise ProtocolError(f"{req.get('request')}: field {key!r} must be {names}, got {value!r:.100}")
    return value


def _f32(name: str, a) -> tuple[dict, np.ndarray]:
    return {"name": name}, np.asarray(a, np.float32)


def _plain(value):
    """A runtime's settings as JSON holds them: containers kept, anything else as text."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)) or (isinstance(value, float) and np.isfinite(value)):
        return value
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m g4c.serve", description=__doc__.split("\n\n")[0])
    _arguments(parser)
    args = parser.parse_args(argv)
    try:
        return serve(args)
    except G4CError as e:
        print(f"g4c serve: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
