"""The C engine (examples/c-engine): llama.cpp's C API behind the engine protocol gives the
same outcome per conformance test as the suite's own `llamacpp` runtime, declares what that
runtime declares, and answers bad requests with the protocol's errors.

The engine is a build product: `nox -s engines` builds it (or make -C examples/c-engine,
its README says how). While it is absent, or llama-cpp-python is not installed, these tests
skip saying so. G4C_C_ENGINE_RESULTS names a results file of a run with both runtimes (the
whole suite, from nox -s engines -- full); without it the comparison runs SUBSET itself.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from g4c import protocol

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "examples" / "c-engine" / "g4c-llama-engine"
RESULTS_ENV = "G4C_C_ENGINE_RESULTS"
# the cases of every path through the engine: refusals, decode, a rewind within the window and
# one past it (llama.cpp keeps too little: the kept tokens are evaluated again), reset,
# batched decode over sequences, a departure (8-bit activations on Q4_0) and a refused load
# (gemma4_unified, a departure), positions far out
SUBSET = ("test_inputs", "test_dense_decode_matches_reference", "test_rewind_keeps_prefix", "test_reset_forgets",
          "test_batched_decode_equals_single", "test_model_in_type[qtype=F32|Q4_0]", "test_architecture_strings",
          "test_rope_long_position[preset=tiny]")


def engine_or_skip() -> str:
    if not ENGINE.is_file():
        pytest.skip(f"{ENGINE.relative_to(ROOT)} is not built: nox -s engines, or make -C examples/c-engine "
                    "LLAMA_INCLUDE=... LLAMA_LIB=... (examples/c-engine/README.md)")
    return str(ENGINE)


class Client:
    """The engine as a child process, one request at a time (g4c.protocol on both ends)."""

    def __init__(self):
        self.proc = subprocess.Popen([engine_or_skip()], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.next_id = 0

    def ask(self, request: str, **fields) -> protocol.Message:
        self.next_id += 1
        for chunk in protocol.encode({"id": self.next_id, "request": request, **fields}, ()):
            self.proc.stdin.write(chunk)
        self.proc.stdin.flush()
        msg = protocol.read(self.proc.stdout.readline, self.proc.stdout.read)
        assert msg is not None and msg.header["id"] == self.next_id, (msg, self.proc.stderr.read1(4000))
        return msg

    def refused(self, request: str, **fields) -> tuple[str, str]:
        """(kind, message) of a request the engine must refuse."""
        head = self.ask(request, **fields).header
        assert head["ok"] is False and "frames" not in head, head
        return head["error"]["kind"], head["error"]["message"]

    def close(self) -> int:
        self.proc.stdin.close()
        code = self.proc.wait(30)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code


@pytest.fixture
def client():
    c = Client()
    yield c
    if c.proc.poll() is None:
        c.proc.kill()
        c.close()


def test_hello_declares_what_the_llamacpp_runtime_declares(client):
    """The suite reads the engine's hello as the runtime's own declaration: the same tolerance
    class, departures (each test, parameters, spec section and reason) and backend."""
    from g4c.runtimes.llamacpp.runtime import LlamaCppRuntime
    from g4c.runtimes.process.runtime import _declared

    hello = client.ask("hello", protocol=1, suite="test").header
    assert hello["ok"] and hello["protocol"] == 1 and hello["engine"] == "g4c-llama-engine", hello
    got, want = _declared(hello, str(ENGINE)), LlamaCppRuntime.capabilities
    for field in ("precision", "trace", "weight_types", "ops", "backend"):
        assert getattr(got, field) == getattr(want, field), field
    assert set(got.departures) == set(want.departures)
    assert len(got.departures) == len(want.departures) == 6
    assert {"device", "driver", "kv_type", "flash_attn", "threads", "library"} <= set(hello["settings"])
    assert client.refused("hello", protocol=2) == ("protocol", "this engine speaks protocol 1, the suite asked for 2")


def test_refusals_leave_the_session_as_it_was(client):
    """Bad input is the protocol's error kind with the message the Python runtimes give;
    unknown requests and sessions are protocol errors; the session then gives the same
    logits as before; shutdown is answered and the engine exits 0."""
    from g4c.conformance.harness import load_model

    model = load_model("tiny")
    path = str(model.path)
    client.ask("hello", protocol=1)
    assert client.refused("load", model=path, max_context=64, n_seq=0) == ("input", "n_seq must be at least 1, got 0")
    kind, msg = client.refused("load", model=path, max_context=0)
    assert kind == "input" and msg.startswith("max_context 0 must be in 1..") and path in msg
    kind, msg = client.refused("load", model=str(ROOT / "README.md"), max_context=8)
    assert kind == "format" and "README.md" in msg
    sid = client.ask("load", model=path, max_context=8).header["session"]
    first = client.ask("prefill", session=sid, tokens=[2, 105, 300]).array("logits")
    assert first.shape == (3, model.n_vocab) and np.isfinite(first).all()
    assert client.refused("prefill", session=sid, tokens=[2, 512]) == (
        "input", "token id 512 at index 1 is out of range [0, 512)")
    assert client.refused("prefill", session=sid, tokens=[]) == ("input", "empty prompt: at least one token is needed")
    assert client.refused("prefill", session=sid, tokens=[2], seq=1) == (
        "input", "sequence 1 out of range: the session holds 1")
    assert client.refused("prefill", session=sid, tokens=[2] * 9) == (
        "input", "positions 0..8 do not fit max_context 8")
    assert client.refused("decode", session=sid, tokens=[2, 3]) == (
        "input", "decode takes one token per sequence: got 2, n_seq is 1")
    assert client.refused("prefill", session=sid, tokens=[2], start_pos="0")[0] == "protocol"
    assert client.refused("prefill", session=sid + 1, tokens=[2]) == (
        "protocol", f"prefill: no session {sid + 1} (never loaded, or unloaded)")
    assert client.refused("trace", session=sid)[0] == "protocol"  # it declares no trace
    np.testing.assert_array_equal(client.ask("logits", session=sid).array("logits"), first[-1])
    np.testing.assert_array_equal(client.ask("prefill", session=sid, tokens=[2, 105, 300]).array("logits"), first)
    assert client.ask("unload", session=sid).header["ok"]
    assert client.refused("logits", session=sid)[0] == "protocol"
    assert client.ask("shutdown").header == {"id": client.next_id, "ok": True}
    assert client.close() == 0


def results_by_case(doc: dict) -> dict[str, dict[str, dict]]:
    """{case: {runtime: result}} of a results file."""
    by_case: dict[str, dict[str, dict]] = {}
    for r in doc["tests"].values():
        if r.get("runtime"):
            by_case.setdefault(r["case"], {})[r["runtime"]] = r
    return by_case


def crashed(result: dict) -> bool:
    """A failure because llama.cpp crashed the engine (a GGML_ASSERT, a segfault): in-process
    the same crash ends the whole pytest run, so a run with both runtimes deselects the case
    for llamacpp (nox -s engines)."""
    return result["outcome"] == "failed" and "was killed by signal SIG" in result.get("message", "")


def test_outcomes_equal_llamacpp(tmp_path):
    """Every conformance test through the C engine ends as it ends on the llamacpp runtime;
    a case run through the engine alone is one where llama.cpp crashes."""
    path = os.environ.get(RESULTS_ENV)
    if path:
        doc = json.loads(Path(path).read_text())
    else:
        engine = engine_or_skip()
        if importlib.util.find_spec("llama_cpp") is None:
            pytest.skip("llama-cpp-python is not installed (pip install -e '.[llamacpp]'): no llamacpp runtime to "
                        "compare with")
        out = tmp_path / "results.json"
        cmd = [sys.executable, "-m", "pytest", "conformance", "-q", "-p", "no:cacheprovider", "--results-json", str(out),
               "--runtime", "process", "--engine", engine, "--runtime", "llamacpp"]
        proc = subprocess.run(cmd + [a for c in SUBSET for a in ("--case", c)], cwd=ROOT, capture_output=True,
                              text=True, timeout=900)
        assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
        doc = json.loads(out.read_text())
    by_case = results_by_case(doc)
    table = {rt: dict(sorted(Counter(r[rt]["outcome"] for r in by_case.values() if rt in r).items()))
             for rt in ("process", "llamacpp")}
    crashes = sorted(case for case, r in by_case.items() if "llamacpp" not in r and "process" in r and crashed(r["process"]))
    print(f"outcomes per runtime: {table}; llama.cpp crashes, run through the engine alone: {crashes}")
    differ = {case: {rt: r[rt]["outcome"] for rt in r} for case, r in by_case.items()
              if case not in crashes and r.get("process", {}).get("outcome") != r.get("llamacpp", {}).get("outcome")}
    assert not differ, f"{len(differ)} of {len(by_case)} tests end differently: {json.dumps(differ, indent=1)[:3000]}"
    assert table["process"].get("passed", 0) > 0, table
