"""The engine protocol (docs/engine-protocol.md) and the process runtime: conformance through
the process boundary gives what the runtime gives in-process, and an engine that crashes,
hangs or breaks the protocol fails one test, cleanly, while the run goes on.

Most tests run pytest on conformance/ in a subprocess with G4C_ENGINE naming the engine:
`python -m g4c.serve --runtime cpu`, or FAKE_ENGINE, written to tmp_path: the same server
misbehaving at the first prefill of a run (a marker file says it has), so that the test
after it meets a fresh, healthy engine.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from g4c import protocol
from g4c.errors import InputError
from g4c.protocol import ProtocolError

ROOT = Path(__file__).resolve().parents[1]
SERVE_CPU = f"{sys.executable} -m g4c.serve --runtime cpu"
HANG_TIMEOUT_S = 10  # G4C_ENGINE_TIMEOUT of the hang test: above a loaded machine's engine start (about 1 s)

FAKE_ENGINE = r'''
"""A fake engine: g4c serve's cpu runtime, misbehaving (MODE) at the first prefill of a run;
the marker file says it did, so the engines started after it behave."""
import os, signal, sys, time
from pathlib import Path

from g4c import protocol, serve
from g4c.errors import UnsupportedModelError
from g4c.runtime import get

MODE, MARKER, PIDS = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
with PIDS.open("a") as f:
    f.write(f"{os.getpid()}\n")


class Fake(serve.Server):
    def on_hello(self, req, msg):
        head, frames = super().on_hello(req, msg)
        if MODE == "killed-departing":  # declares a departure on the test where it will crash
            head["capabilities"]["departures"].append({"test": "test_bad_tokens_then_usable", "params": {"needle": ["512"]},
                                                       "spec": "5", "reason": "a declared departure"})
        return head, frames

    def on_load(self, req, msg):
        if MODE == "refuse":  # as a GPU engine whose attention takes head dims of multiples of 32
            model = self.model(req["model"])
            odd = sorted({s.head_dim for s in model.config.layers if s.head_dim % 32})
            if odd:
                raise UnsupportedModelError(f"{model.path}: head dim {odd[0]}: this engine takes multiples of 32")
        return super().on_load(req, msg)

    def on_prefill(self, req, msg):
        if MODE == "chatty":  # far more than a pipe holds (64 KiB), at every prefill
            sys.stderr.write(("chatter " * 15 + "\n") * 20000)
            sys.stderr.flush()
        if MARKER.exists() or MODE in ("refuse", "chatty"):
            return super().on_prefill(req, msg)
        MARKER.write_text(MODE)
        print(f"fake engine: {MODE} at prefill", file=sys.stderr, flush=True)
        if MODE.startswith("killed"):
            os.kill(os.getpid(), signal.SIGKILL)
        elif MODE == "bad-json":  # stdout noise where the response belongs
            self.out.write(b"warming up the kernels...\n")
        elif MODE == "bad-frame":  # logits declared [n, vocab], 4 bytes short
            _, [(desc, logits)] = super().on_prefill(req, msg)
            line = protocol.encode({"id": req["id"], "ok": True}, [(desc, logits)])[0]
            self.out.write(line + protocol.PREFIX.pack(logits.nbytes - 4) + logits.tobytes()[:-4])
        self.out.flush()
        time.sleep(3600)  # the hang itself, or after a broken message: only the suite's kill ends it


sys.exit(Fake(get("cpu"), "cpu", serve.protocol_stdout()).run(sys.stdin.buffer))
'''


def fake_engine(tmp_path: Path, mode: str) -> tuple[str, Path]:
    """The fake engine's command line in `mode`, and the file its processes write their pids to."""
    script, pids = tmp_path / "fake_engine.py", tmp_path / "engine.pids"
    script.write_text(FAKE_ENGINE)
    return f"{sys.executable} {script} {mode} {tmp_path / 'misbehaved'} {pids}", pids


def conformance(tmp_path: Path, engine: str, *cases: str, runtimes=("process",), timeout_s: float | None = None):
    """pytest on conformance/ with these --case selections and G4C_ENGINE; (process, results)."""
    out = tmp_path / "results.json"
    env = {**os.environ, "G4C_ENGINE": engine}
    env.pop("G4C_ENGINE_TIMEOUT", None)
    if timeout_s is not None:
        env["G4C_ENGINE_TIMEOUT"] = str(timeout_s)
    cmd = [sys.executable, "-m", "pytest", "conformance", "-q", "-p", "no:cacheprovider", "--results-json", str(out)]
    cmd += [a for r in runtimes for a in ("--runtime", r)] + [a for c in cases for a in ("--case", c)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


# -- the messages ---------------------------------------------------------------------------
def _stream(chunks) -> io.BytesIO:
    return io.BytesIO(b"".join(bytes(c) for c in chunks))


def test_messages_round_trip_and_a_wrong_byte_count_is_named():
    arrays = [({"name": "x"}, np.arange(6, dtype=np.float32).reshape(2, 3)),
              ({"name": "pos", "layer": 3}, np.array([262140, -1], np.int32)), ({"name": "raw"}, np.arange(5, dtype=np.uint8))]
    s = _stream(protocol.encode({"id": 1, "request": "op"}, arrays))
    msg = protocol.read(s.readline, s.read)
    assert msg.header["frames"][1] == {"name": "pos", "layer": 3, "dtype": "i32", "shape": [2]}
    for (_, want), (_, got) in zip(arrays, msg.frames):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert protocol.read(s.readline, s.read) is None  # the end, between messages

    line, _, data = protocol.encode({"id": 2, "ok": True}, [({"name": "logits"}, np.zeros((2, 4), np.float32))])
    s = _stream([line, protocol.PREFIX.pack(28), bytes(data)[:28]])
    with pytest.raises(ProtocolError, match=r"frame 'logits': its byte count is 28, but f32 of shape \[2, 4\] is 32 bytes"):
        protocol.read(s.readline, s.read)
    s = _stream([b"loading model...\n"])
    with pytest.raises(ProtocolError, match="not a JSON line .*'loading model...'"):
        protocol.read(s.readline, s.read)


def test_error_kinds_become_the_suites_exceptions():
    err = protocol.error_from({"kind": "input", "message": "token id 512 at index 1 is out of range [0, 512)"}, "prefill()")
    assert type(err) is InputError and str(err) == "token id 512 at index 1 is out of range [0, 512)"
    body = protocol.error_body(ValueError("bad"))
    assert body == {"kind": "internal", "message": "ValueError: bad"}
    err = protocol.error_from(body, "decode(session=1)")
    assert isinstance(err, protocol.EngineError) and "decode(session=1)" in str(err) and "ValueError: bad" in str(err)


def test_server_answers_malformed_requests_and_goes_on():
    from g4c.runtimes.cpu import CpuRuntime
    from g4c.serve import Server

    requests = [{"id": 1, "request": "frobnicate"}, {"id": 2, "request": "load", "model": "x.gguf"},
                {"id": 3, "request": "prefill", "session": 9, "tokens": [1]}, {"id": 4, "request": "shutdown"}]
    out = io.BytesIO()
    code = Server(CpuRuntime(), "cpu", out).run(_stream([protocol.encode(r)[0] for r in requests]))
    out.seek(0)
    replies = [protocol.read(out.readline, out.read).header for _ in requests]
    assert code == 0 and [r["id"] for r in replies] == [1, 2, 3, 4] and replies[3]["ok"] is True
    assert "unknown request 'frobnicate'" in replies[0]["error"]["message"]
    assert replies[1]["error"] == {"kind": "protocol", "message": "load: field 'max_context' is missing"}
    assert "no session 9" in replies[2]["error"]["message"]


def test_serve_keeps_stdout_for_the_protocol():
    """A print or a C library's write to fd 1 inside the engine lands on stderr."""
    code = ("import os; from g4c import serve; out = serve.protocol_stdout(); print('stray print'); "
            "os.write(1, b'stray write\\n'); out.write(b'protocol\\n'); out.flush()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.stdout == b"protocol\n" and b"stray print" in proc.stderr and b"stray write" in proc.stderr


def test_unusable_engine_settings_make_the_runtime_unavailable(monkeypatch):
    from g4c.runtimes.process import ProcessRuntime

    monkeypatch.delenv("G4C_ENGINE", raising=False)
    assert "pass --engine" in ProcessRuntime().availability().reason
    monkeypatch.setenv("G4C_ENGINE", str(ROOT / "no-such-engine"))
    av = ProcessRuntime().availability()
    assert not av.ok and "cannot start engine" in av.reason and "no-such-engine" in av.reason
    monkeypatch.setenv("G4C_ENGINE", SERVE_CPU)
    monkeypatch.setenv("G4C_ENGINE_TIMEOUT", "soon")
    assert "G4C_ENGINE_TIMEOUT 'soon' must be a number of seconds" in ProcessRuntime().availability().reason


# -- conformance through the boundary -----------------------------------------------------------
# prefill, decode and logits; rewind; reset; trace; an odd shape traced; two sequences; input
# errors; op cases with f32, int32 (positions) and uint8 (Q4_0 blocks) frames
SUBSET = ["test_dense_decode_matches_reference", "test_rewind_keeps_prefix", "test_reset_forgets",
          "test_k_eq_v_layer_outputs", "test_shape[shape=hd48-80-g2-w3]", "test_batched_decode_equals_single[n_seq=2]",
          "test_inputs", "test_op[opcase=rope-d512-h2-b1000000-ff-p262140-n4|matvec-Q4_0-67x288-n4]"]


def test_subset_through_the_process_equals_cpu(tmp_path):
    """Each case of SUBSET on the cpu runtime in-process and behind `g4c serve`, in one run:
    the same outcome (passed) and the same metrics, to the last bit."""
    proc, doc = conformance(tmp_path, SERVE_CPU, *SUBSET, runtimes=("cpu", "process"))
    assert proc.returncode == 0, proc.stdout[-3000:]
    by_case: dict[str, dict] = {}
    for r in doc["tests"].values():
        by_case.setdefault(r["case"], {})[r["runtime"]] = r
    assert len(by_case) == 13 and doc["counts_by_runtime"]["process"]["passed"] == 13, doc["counts_by_runtime"]
    for case, r in by_case.items():
        assert r["process"]["outcome"] == r["cpu"]["outcome"] == "passed", case
        assert r["process"]["metrics"] == r["cpu"]["metrics"], (case, r["process"]["metrics"], r["cpu"]["metrics"])
    assert sum(bool(r["cpu"]["metrics"]) for r in by_case.values()) == 8  # all but test_inputs' and test_reset_forgets
    settings = doc["runtimes"]["process"]["settings"]
    assert settings["engine"] == "cpu" and settings["command"] == SERVE_CPU and settings["protocol"] == 1


def test_refusals_cross_the_boundary(tmp_path):
    """An engine's unsupported_model error is the in-process UnsupportedModelError: the
    sweep case it refuses is not supported (its message naming the file and the dimension),
    the one it takes passes."""
    engine, _ = fake_engine(tmp_path, "refuse")
    proc, doc = conformance(tmp_path, engine, "test_shape[shape=hd48-80-g2-w3|hd32-64-g1-w1]")
    assert proc.returncode == 0, proc.stdout[-3000:]
    got = {r["params"]["shape"]: r for r in doc["tests"].values()}
    assert got["hd32-64-g1-w1"]["outcome"] == "passed"
    refused = got["hd48-80-g2-w3"]
    assert refused["outcome"] == "not_supported" and "head dim 48: this engine takes multiples of 32" in refused["reason"]


# -- engines that misbehave ---------------------------------------------------------------------
def test_chatty_engine_never_blocks(tmp_path):
    """An engine writing megabytes to stderr at each request runs as a quiet one: the suite
    reads its stderr all along, so the engine never waits on a full pipe."""
    engine, _ = fake_engine(tmp_path, "chatty")
    proc, doc = conformance(tmp_path, engine, "test_inputs", timeout_s=HANG_TIMEOUT_S)
    assert proc.returncode == 0 and doc["counts_by_runtime"]["process"]["passed"] == 4, proc.stdout[-3000:]


WHY = {
    "killed": "was killed by signal SIGKILL",
    "hang": f"did not answer within {HANG_TIMEOUT_S} s (G4C_ENGINE_TIMEOUT); the suite killed it",
    "bad-frame": "broke the protocol (frame 'logits': its byte count is 12284, but f32 of shape [6, 512] is 12288 bytes)",
    "bad-json": "broke the protocol (not a JSON line",
}


@pytest.mark.parametrize("mode", list(WHY))
def test_misbehaving_engine_fails_one_test_and_the_run_goes_on(tmp_path, mode):
    """The first prefill of the run meets the misbehaviour: that test fails with one message
    naming the request, what went wrong and the engine's last stderr line; the next tests
    pass on a fresh engine, and no engine process outlives the run."""
    engine, pids = fake_engine(tmp_path, mode)
    t = time.monotonic()
    proc, doc = conformance(tmp_path, engine, "test_inputs", timeout_s=HANG_TIMEOUT_S)
    assert time.monotonic() - t < 300
    results = list(doc["tests"].values())
    assert [r["outcome"] for r in results] == ["failed", "passed", "passed", "passed"], proc.stdout[-3000:]
    message = results[0]["message"]
    assert "EngineError: engine `" in message and WHY[mode] in message, message
    assert "during request prefill(id=" in message and "tokens=[" in message, message
    assert f"its stderr ended with:\n    fake engine: {mode} at prefill" in message, message
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 2 and not [p for p in started if running(p)], started


def test_crash_on_a_declared_departure_is_a_failure(tmp_path):
    """A departure covers an engine that computes differently by design, never one that
    crashes: the departure's xfail takes suite errors (G4CError), of which EngineError is one."""
    engine, _ = fake_engine(tmp_path, "killed-departing")
    proc, doc = conformance(tmp_path, engine, "test_inputs")
    results = list(doc["tests"].values())
    assert [r["outcome"] for r in results] == ["failed", "passed", "passed", "passed"], proc.stdout[-3000:]
    assert "was killed by signal SIGKILL" in results[0]["message"], results[0]


def test_interrupted_run_leaves_no_engine(tmp_path):
    """Ctrl-C while the engine hangs in a request: the suite stops, and kills the engine."""
    engine, pids = fake_engine(tmp_path, "hang")
    env = {**os.environ, "G4C_ENGINE": engine}
    env.pop("G4C_ENGINE_TIMEOUT", None)
    run = subprocess.Popen([sys.executable, "-m", "pytest", "conformance", "-q", "-p", "no:cacheprovider", "--runtime",
                            "process", "--case", "test_inputs"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "misbehaved").exists():
            assert run.poll() is None and time.monotonic() < deadline, "the engine never reached its first prefill"
            time.sleep(0.2)
        run.send_signal(signal.SIGINT)
        out, _ = run.communicate(timeout=60)
    finally:
        run.kill()
    assert "KeyboardInterrupt" in out, out[-2000:]
    started = [int(p) for p in pids.read_text().split()]
    assert started and not [p for p in started if running(p)], started
