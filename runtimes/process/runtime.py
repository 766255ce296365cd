"""The process runtime: an engine in any language, run as a child process that speaks the
engine protocol (docs/engine-protocol.md, g4c.protocol) on its stdin and stdout.

    pytest conformance --runtime process --engine "python -m g4c.serve --runtime cpu"
    G4C_ENGINE="./my-engine --device 0" g4c run --runtime process

The engine's command line is G4C_ENGINE (split as a POSIX shell would), which --engine
sets. One engine process per command line serves every session of a run: availability()
starts it and reads its hello, and from then on its declared capabilities are this
runtime's. Each request waits at most G4C_ENGINE_TIMEOUT seconds. An engine that exits, hangs
or breaks the protocol is killed and the request fails with an EngineError naming the
request and the tail of the engine's stderr; its sessions are gone, and the next load
starts a fresh engine, so a run goes on with its next test. Engines still running when the
suite exits are asked to shut down, then killed with their process group. POSIX only
(poll() on the engine's pipes).
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import operator
import os
import select
import shlex
import signal
import subprocess
import threading
import time
import weakref
from collections import deque

import numpy as np

from g4c import __version__
from g4c.cases import Case
from g4c.errors import G4CError, InputError
from g4c.protocol import MAX_LINE, VERSION, EngineError, Message, ProtocolError, encode, error_from, op_output_shape, read
from g4c.reference import TRACE_OPS
from g4c.runtime import Availability, Capabilities, Departure, capabilities, env_seconds

ENGINE_ENV = "G4C_ENGINE"
TIMEOUT_ENV = "G4C_ENGINE_TIMEOUT"
# seconds per request: in the whole conformance suite through `g4c serve --runtime cpu` on 2
# shared cores the slowest request took 16 s (loading the real 270M into float32), the
# slowest prefill 5 s (1027 tokens) and a fresh engine's hello 0.7 s; 120 leaves a slower
# machine or engine 7 times that
DEFAULT_TIMEOUT = 120.0
STDERR_LINES = 20  # the tail of the engine's stderr that a failure shows
STDERR_LINE_CHARS = 500
QUIT_S = 2.0  # at exit: how long an engine has to answer shutdown and exit before it is killed

# what a runtime that knows no engine yet declares: nothing, and it runs only when named
UNDECLARED = Capabilities(explicit_only=True)


class ProcessRuntime:
    """Sessions of an engine that speaks the engine protocol, in a child process."""

    name = "process"

    def availability(self) -> Availability:
        """Whether the engine starts and answers hello in the suite's protocol version with a
        declaration the suite can read (asked once per engine command line)."""
        try:
            return _engine().available()
        except G4CError as e:
            return Availability(False, str(e))

    @property
    def capabilities(self) -> Capabilities:
        """The engine's declaration from its hello (it runs only when named), or nothing
        before availability() has started it."""
        try:
            eng = _engine()
        except G4CError:
            return UNDECLARED
        return eng.declared or UNDECLARED

    def settings(self) -> dict:
        """What results depend on: the engine's own settings (device, driver), its name and
        version as its hello gave them, and the command line it ran as."""
        eng = _engine()
        hello = eng.hello or {}
        own = hello.get("settings")
        return {**(own if isinstance(own, dict) else {}), "engine": hello.get("engine"),
                "engine_version": hello.get("version"), "command": eng.cmd, "protocol": VERSION}

    def load(self, model, max_context: int, n_seq: int = 1, trace: bool = False) -> "ProcessSession":
        eng = _engine().running()
        msg = eng.request({"request": "load", "model": str(model.path), "max_context": operator.index(max_context),
                           "n_seq": operator.index(n_seq), "trace": bool(trace)}, _frames())
        sid = msg.header.get("session")
        if not isinstance(sid, int) or isinstance(sid, bool):
            raise EngineError(f"engine `{eng.cmd}` answered load without an integer \"session\": {msg.header!r:.300}")
        return ProcessSession(eng, sid, model, max_context, n_seq, bool(trace))

    def run_op(self, case, inputs: dict, repeat: int = 0) -> tuple[np.ndarray, list[float]]:
        """An op case through the engine: its inputs go as frames, its output comes back as
        one float32 frame of the case's size; seconds as the engine timed them."""
        eng = _engine().running()
        size = int(np.prod(op_output_shape(case)))

        def check(header, descs):
            if not (len(descs) == 1 and descs[0]["name"] == "output" and descs[0]["dtype"] == "f32"
                    and int(np.prod(descs[0]["shape"])) == size):
                raise ProtocolError(f"expected one f32 frame \"output\" of {size} values ({case.id}: "
                                    f"{op_output_shape(case)}), got {json.dumps(descs)[:300]}")

        msg = eng.request({"request": "op", "case": dataclasses.asdict(case), "case_id": case.id, "repeat": repeat},
                          check, [({"name": k}, v) for k, v in inputs.items()])
        seconds = msg.header.get("seconds", [])
        if not (isinstance(seconds, list) and all(isinstance(s, (int, float)) for s in seconds)):
            raise EngineError(f"engine `{eng.cmd}` answered op {case.id} with \"seconds\" not a list of numbers: "
                              f"{seconds!r:.200}")
        return msg.array("output"), [float(s) for s in seconds]


class ProcessSession:
    """A session held by the engine; every call is one request. Logits come back as the
    engine computed them, checked only for their shape: their values are the tests' to judge."""

    def __init__(self, engine: "Engine", sid: int, model, max_context: int, n_seq: int, trace: bool):
        self.engine, self.generation, self.id = engine, engine.generation, sid
        self.max_context, self.n_seq = max_context, n_seq
        cfg = model.config
        self.n_vocab, self.n_embd, self.n_layer = model.n_vocab, cfg.n_embd, cfg.n_layer
        self._traced, self._trace, self._rows = trace, None, 0  # rows: of the last prefill or decode that ran
        weakref.finalize(self, engine.unload, self.generation, sid)

    def prefill(self, tokens, start_pos: int = 0, seq: int = 0, all_logits: bool = True) -> np.ndarray:
        toks = _token_ids(tokens)
        self._trace = None
        msg = self._request({"request": "prefill", "tokens": toks, "start_pos": operator.index(start_pos),
                             "seq": operator.index(seq), "all_logits": bool(all_logits)},
                            _frames(("logits", [len(toks) if all_logits else 1, self.n_vocab])))
        self._rows = len(toks)
        return msg.array("logits")

    def decode(self, tokens) -> np.ndarray:
        toks = _token_ids(tokens)
        self._trace = None
        msg = self._request({"request": "decode", "tokens": toks}, _frames(("logits", [self.n_seq, self.n_vocab])))
        self._rows = len(toks)
        return msg.array("logits")

    @property
    def logits(self) -> np.ndarray:
        return self._request({"request": "logits"}, _frames(("logits", [self.n_vocab]))).array("logits")

    def reset(self, seq: int | None = None) -> None:
        self._request({"request": "reset", "seq": None if seq is None else operator.index(seq)}, _frames())

    @property
    def trace(self) -> dict | None:
        """Per-layer outputs of the last prefill or decode, {(layer, op): (rows, n_embd)}, read
        from the engine once per call; None for a session loaded without trace."""
        if not self._traced:
            return None
        if self._trace is None:
            if not self._rows:
                return {}
            msg = self._request({"request": "trace"}, self._check_trace)
            self._trace = {(d["layer"], d["name"]): a for d, a in msg.frames}
        return self._trace

    def _check_trace(self, header, descs) -> None:
        for d in descs:
            if not (d["name"] in TRACE_OPS and isinstance(d.get("layer"), int) and 0 <= d["layer"] < self.n_layer
                    and d["dtype"] == "f32" and len(d["shape"]) == 2 and d["shape"][0] <= self._rows
                    and d["shape"][1] == self.n_embd):
                raise ProtocolError(f"a trace frame must be f32 named one of {', '.join(TRACE_OPS)}, with a layer in "
                                    f"0..{self.n_layer - 1} and shape [rows <= {self._rows}, {self.n_embd}]; got "
                                    f"{json.dumps(d)[:300]}")
        if len(descs) > self.n_layer * len(TRACE_OPS):
            raise ProtocolError(f"{len(descs)} trace frames for {self.n_layer} layers of {len(TRACE_OPS)} outputs")

    def _request(self, header: dict, check, frames=()) -> Message:
        if self.engine.generation != self.generation or not self.engine.alive:
            raise EngineError(f"session {self.id} is gone: the engine process `{self.engine.cmd}` that held it ended "
                              "(its failure was reported then); load a new session")
        return self.engine.request({"request": header["request"], "session": self.id, **header}, check, frames)


def _frames(*expected: tuple[str, list[int]]):
    """check() of a response that must carry exactly these f32 frames, (name, shape) in order."""

    def check(header, descs):
        got = [(d["name"], d["dtype"], d["shape"]) for d in descs]
        want = [(name, "f32", shape) for name, shape in expected]
        if got != want:
            shown = ", ".join(f"{n} {t} {s}" for n, t, s in want) or "no frames"
            raise ProtocolError(f"expected {shown}; got {', '.join(f'{n} {t} {s}' for n, t, s in got) or 'no frames'}")

    return check


def _token_ids(tokens) -> list[int]:
    try:
        return [operator.index(t) for t in tokens]
    except TypeError:
        raise InputError(f"token ids must be integers, got {np.asarray(tokens).dtype}") from None


# -- the engine process ------------------------------------------------------------------------
class _Timeout(Exception):
    pass


class _Ended(Exception):
    """The engine's stdout ended (it exited, or closed it)."""


class Engine:
    """One engine process for one command line, restarted when a failure killed it."""

    def __init__(self, argv: list[str], timeout: float):
        self.argv, self.cmd, self.timeout = argv, shlex.join(argv), timeout
        self.proc: subprocess.Popen | None = None
        self.generation = 0  # which process this is: sessions of an earlier one are gone
        self.hello: dict | None = None  # the first process's hello
        self.declared: Capabilities | None = None
        self._availability: Availability | None = None
        self._unloads: list[int] = []  # sessions garbage-collected, to unload before the next request
        self._next_id = 0
        self._buf = bytearray()  # stdout read but not yet consumed
        self._stderr: deque[str] = deque(maxlen=STDERR_LINES)
        self._drain: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None

    # -- lifecycle -------------------------------------------------------------------------
    def available(self) -> Availability:
        if self._availability is None:
            try:
                self.running()
                declared = _declared(self.hello, self.cmd)
                capabilities(_Declaring(declared))  # the suite's own checks of a declaration
                self.declared, self._availability = declared, Availability(True)
            except G4CError as e:
                self.stop()
                self._availability = Availability(False, str(e))
        return self._availability

    def running(self) -> "Engine":
        """This engine, started (and greeted) if it is not running."""
        if self.proc is None:
            self._start()
        return self

    def _start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != ENGINE_ENV}  # an engine that is itself the suite must not recurse
        try:
            # a session of its own: Ctrl-C reaches the suite alone, which then stops the engine
            # and everything it started (its process group)
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, env=env, bufsize=0, start_new_session=True)
        except OSError as e:
            raise EngineError(f"cannot start engine `{self.cmd}` ({ENGINE_ENV}): {e}") from None
        self.generation += 1
        self._buf.clear()
        self._unloads.clear()
        self._stderr = deque(maxlen=STDERR_LINES)
        self._drain = threading.Thread(target=_drain, args=(self.proc.stderr, self._stderr), daemon=True,
                                       name=f"stderr of {self.cmd}")
        self._drain.start()
        os.set_blocking(self.proc.stdin.fileno(), False)
        self._readable = select.poll()
        self._readable.register(self.proc.stdout.fileno(), select.POLLIN)
        self._writable = select.poll()
        self._writable.register(self.proc.stdin.fileno(), select.POLLOUT)
        try:
            hello = self.request({"request": "hello", "protocol": VERSION, "suite": f"gemma4-conformance {__version__}"},
                                 _frames()).header
        except EngineError:
            raise
        except G4CError as e:  # it answered, with an error (its device absent, another protocol version)
            self.stop()
            raise EngineError(f"engine `{self.cmd}` refused hello: {e}") from None
        if hello.get("protocol") != VERSION:
            self.stop()
            raise EngineError(f"engine `{self.cmd}` answered hello with protocol {hello.get('protocol')!r}; the suite "
                              f"speaks {VERSION}")
        if self.hello is None:
            self.hello = hello

    def unload(self, generation: int, sid: int) -> None:
        """A session was garbage-collected: free it in the engine before the next request (a
        finalizer must not talk to the engine itself: it may run in the middle of a request)."""
        if generation == self.generation and self.proc is not None:
            self._unloads.append(sid)

    def stop(self) -> None:
        """Ask a running engine to shut down; kill it (and its process group) if it has not
        exited within QUIT_S."""
        if self.proc is None:
            return
        try:
            self._exchange({"request": "shutdown"}, _frames(), timeout=QUIT_S)
            self.proc.wait(QUIT_S)
        except (G4CError, subprocess.TimeoutExpired):
            pass
        self._kill()

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # already gone, with its group
            pass
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
        if self._drain is not None:
            self._drain.join(1.0)  # the last words it wrote, for the failure message

    # -- requests ----------------------------------------------------------------------------
    def request(self, header: dict, check, frames=()) -> Message:
        """Send a request and read its response (check(header, descriptors) refuses frames the
        request did not ask for, before they are read). An error response raises the
        exception its kind stands for (g4c.protocol.ERROR_KINDS), the engine still running;
        a crash, hang or broken message kills the engine and raises EngineError."""
        while self._unloads:
            self._exchange({"request": "unload", "session": self._unloads.pop()}, _frames(), quiet=True)
        return self._exchange(header, check, frames)

    def _exchange(self, header: dict, check, frames=(), timeout: float | None = None, quiet: bool = False) -> Message:
        """One request and its response; quiet: an error response is no exception (an unload
        the engine refuses changes nothing for the tests)."""
        if self.proc is None:
            raise EngineError(f"engine `{self.cmd}` is not running")
        self._next_id += 1
        header = {"id": self._next_id, **header}
        what = _described(header)
        chunks = encode(header, frames)  # before the try: a request the suite cannot encode is not the engine's fault
        deadline = time.monotonic() + (timeout or self.timeout)

        def checked(h: dict, descs: list) -> None:
            if h.get("ok") is True:
                check(h, descs)
            elif descs:
                raise ProtocolError(f"an error response carries no frames: {json.dumps(h)[:300]}")

        try:
            for chunk in chunks:
                self._write(chunk, deadline)
            msg = read(lambda: self._readline(deadline), lambda n: self._read_exact(n, deadline), checked)
            if msg is None:
                raise _Ended
            if msg.header.get("id") != header["id"] or not isinstance(msg.header.get("ok"), bool):
                raise ProtocolError(f"the response must carry the request's id {header['id']} and \"ok\" true or false: "
                                    f"{json.dumps(msg.header)[:300]}")
        except (_Timeout, _Ended, ProtocolError, OSError) as e:
            raise self._failed(what, e, timeout or self.timeout) from None
        except BaseException:  # interrupted mid-message: the stream cannot be followed any more
            self._kill()
            raise
        if not msg.header["ok"] and not quiet:
            raise error_from(msg.header.get("error"), what)
        return msg

    def _failed(self, what: str, e: Exception, timeout: float) -> EngineError:
        if isinstance(e, _Timeout):
            why = f"did not answer within {timeout:g} s ({TIMEOUT_ENV}); the suite killed it"
        elif isinstance(e, ProtocolError):
            why = f"broke the protocol ({e}); the suite killed it"
        else:  # its stdout ended or its stdin closed: it is exiting, let it finish saying why
            try:
                self.proc.wait(1.0)
            except subprocess.TimeoutExpired:
                pass
            why = _ending(self.proc.returncode)
        self._kill()
        lines = list(self._stderr)
        tail = ("its stderr ended with:\n" + "\n".join(f"    {line}" for line in lines)) if lines else "its stderr was empty"
        return EngineError(f"engine `{self.cmd}` {why} during request {what}; {tail}")

    def _write(self, chunk, deadline: float) -> None:
        view = memoryview(chunk).cast("B")
        fd = self.proc.stdin.fileno()
        while view:
            self._wait(self._writable, deadline)
            try:
                n = os.write(fd, view[: 1 << 20])
            except BlockingIOError:
                continue
            view = view[n:]

    def _readline(self, deadline: float) -> bytes:
        start = 0
        while True:
            i = self._buf.find(b"\n", start)
            if i >= 0:
                line = bytes(self._buf[: i + 1])
                del self._buf[: i + 1]
                return line
            if len(self._buf) > MAX_LINE:
                raise ProtocolError(f"no newline in the first {MAX_LINE} bytes of a header line: "
                                    f"{bytes(self._buf[:200])!r}...")
            start = len(self._buf)
            self._fill(deadline)

    def _read_exact(self, n: int, deadline: float) -> bytearray:
        out = bytearray(n)
        got = min(n, len(self._buf))
        out[:got] = self._buf[:got]
        del self._buf[:got]
        view = memoryview(out)
        while got < n:
            self._wait(self._readable, deadline)
            k = os.readv(self.proc.stdout.fileno(), [view[got:]])
            if not k:
                raise _Ended
            got += k
        return out

    def _fill(self, deadline: float) -> None:
        self._wait(self._readable, deadline)
        data = os.read(self.proc.stdout.fileno(), 1 << 16)
        if not data:
            raise _Ended
        self._buf += data

    @staticmethod
    def _wait(poller, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(max(1, int(left * 1000))):
            raise _Timeout


def _drain(stream, tail: deque) -> None:
    """Read the engine's stderr to its end, keeping the last lines, then close it: a chatty
    engine never blocks on a full pipe, and a failure can show what it said last. (The
    thread owns the stream: closed elsewhere, its descriptor could be reused under it.)"""
    partial = b""
    with stream:
        while data := stream.read(1 << 16):
            *lines, partial = (partial + data).split(b"\n")
            partial = partial[-4 * STDERR_LINE_CHARS:]  # a line without end: its last part is enough
            tail.extend(_line(b) for b in lines[-STDERR_LINES:])
    if partial:
        tail.append(_line(partial))


def _ending(code: int | None) -> str:
    """How an engine ended, from its exit status (negative: the signal that killed it)."""
    if code is None:
        return "closed its stdout"
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by signal {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


def _line(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").rstrip("\r")
    return text if len(text) <= STDERR_LINE_CHARS else "..." + text[-STDERR_LINE_CHARS:]


def _described(header: dict) -> str:
    """A request as failures name it: prefill(session=3, tokens=[16 ids], start_pos=0, ...)."""
    parts = []
    for k, v in header.items():
        if k in ("request", "frames", "case"):
            continue
        if isinstance(v, list) and len(v) > 8:
            v = f"[{len(v)} values]"
        else:
            v = json.dumps(v)
        parts.append(f"{k}={v}")
    return f"{header['request']}({', '.join(parts)})"


def _declared(hello: dict, cmd: str) -> Capabilities:
    """The Capabilities an engine's hello declares; EngineError naming a malformed field."""
    caps = hello.get("capabilities", {})

    def bad(key: str, want: str):
        return EngineError(f"engine `{cmd}`: hello capabilities.{key} must be {want}, got {json.dumps(caps.get(key))[:200]}")

    if not isinstance(caps, dict):
        raise EngineError(f"engine `{cmd}`: hello \"capabilities\" must be an object, got {json.dumps(caps)[:200]}")
    names = lambda key: isinstance(caps.get(key), list) and all(isinstance(x, str) for x in caps[key])  # noqa: E731
    if not isinstance(caps.get("precision", "f32"), str):
        raise bad("precision", "a string")
    if not isinstance(caps.get("trace", False), bool):
        raise bad("trace", "true or false")
    if caps.get("weight_types") is not None and not names("weight_types"):
        raise bad("weight_types", "null or a list of GGML type names")
    if "ops" in caps and not names("ops"):
        raise bad("ops", "a list of op names")
    if not isinstance(caps.get("backend", ""), str):
        raise bad("backend", "a string")
    deps = caps.get("departures", [])
    if not isinstance(deps, list):
        raise bad("departures", "a list")
    departures = []
    for d in deps:
        params = d.get("params", {}) if isinstance(d, dict) else None
        if not (isinstance(d, dict) and all(isinstance(d.get(k), str) for k in ("test", "spec", "reason"))
                and isinstance(params, dict) and all(isinstance(v, (str, list)) for v in params.values())):
            raise EngineError(f"engine `{cmd}`: a departure must be {{\"test\", \"spec\", \"reason\": strings, "
                              f"\"params\": {{name: value or [values]}}}}, got {json.dumps(d)[:200]}")
        departures.append(Departure(Case.of(d["test"], **params), d["spec"], d["reason"]))
    engine = hello.get("engine")
    return Capabilities(
        precision=caps.get("precision", "f32"), trace=caps.get("trace", False),
        weight_types=None if caps.get("weight_types") is None else frozenset(caps["weight_types"]),
        departures=tuple(departures), methods=frozenset({"settings"}), ops=frozenset(caps.get("ops", [])),
        backend=caps.get("backend") or (engine if isinstance(engine, str) else ""), explicit_only=True)


class _Declaring:
    """A stand-in with a declaration and the methods it may name, for g4c.runtime.capabilities()."""

    name = ProcessRuntime.name
    settings = run_op = staticmethod(lambda *a, **k: None)

    def __init__(self, caps: Capabilities):
        self.capabilities = caps


# -- one engine per command line, stopped at exit ---------------------------------------------
_ENGINES: dict[tuple, Engine] = {}


def _engine() -> Engine:
    """The engine of G4C_ENGINE and G4C_ENGINE_TIMEOUT (not started yet); G4CError naming the
    variable when either is unusable."""
    text = os.environ.get(ENGINE_ENV, "").strip()
    if not text:
        raise G4CError(f"no engine command: pass --engine \"CMD ARGS\" or set {ENGINE_ENV}")
    try:
        argv = shlex.split(text)
    except ValueError as e:
        raise G4CError(f"{ENGINE_ENV} {text!r} is not a command line: {e}") from None
    timeout = env_seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT)
    key = (tuple(argv), timeout)
    if key not in _ENGINES:
        _ENGINES[key] = Engine(argv, timeout)
    return _ENGINES[key]


@atexit.register
def _stop_engines() -> None:
    for eng in _ENGINES.values():
        eng.stop()
