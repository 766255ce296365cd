"""The session contract: what a runtime must and may declare, and the rules every session
follows (g4c.runtime, g4c.session, g4c.cases).

- A runtime from outside, registered by entry point and declaring nothing beyond name,
  availability() and load(), runs the whole conformance suite: what it lacks is reported
  "not supported", nothing fails.
- No module outside runtimes/ touches a session's private attributes.
- Every departure a registered runtime declares names cases the suite has.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from g4c import runtime as registry
from g4c.cases import Case
from g4c.errors import G4CError
from g4c.session import KVPlan

ROOT = Path(__file__).resolve().parents[1]

BARE = '''
"""An engine from outside: the Protocol's three members and a session, nothing declared."""
import numpy as np
from g4c.runtime import Availability
from g4c.runtimes.cpu.runtime import CpuSession  # its forward; the engine exposes none of its extras


class BareSession:
    def __init__(self, model, max_context, n_seq):
        self._s = CpuSession(model, max_context, n_seq)
        self.n_seq, self.max_context, self.trace = n_seq, max_context, None

    def prefill(self, tokens, start_pos=0, seq=0, all_logits=True):
        return np.array(self._s.prefill(tokens, start_pos, seq, all_logits))

    def decode(self, tokens):
        return np.array(self._s.decode(tokens))

    @property
    def logits(self):
        return np.array(self._s.logits)

    def reset(self, seq=None):
        self._s.reset(seq)


class Bare:
    name = "bare"

    def availability(self):
        return Availability(True)

    def load(self, model, max_context, n_seq=1, trace=False):
        return BareSession(model, max_context, n_seq)
'''


@pytest.fixture(scope="module")
def bare_plugin(tmp_path_factory) -> dict:
    """PYTHONPATH with a module and its dist-info declaring the entry point, as pip would
    install an outside engine's package."""
    d = tmp_path_factory.mktemp("bare")
    (d / "bare_engine.py").write_text(BARE)
    info = d / "bare_engine-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bare-engine\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[gemma4_conformance.runtimes]\nbare = bare_engine:Bare\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(d), str(ROOT), os.environ.get("PYTHONPATH", "")])}


def test_outside_runtime_declaring_nothing_runs_the_whole_suite(bare_plugin, tmp_path):
    out = tmp_path / "bare.json"
    proc = subprocess.run([sys.executable, "-m", "pytest", "conformance", "--runtime", "bare", "-q", "-p",
                           "no:cacheprovider", "--results-json", str(out)], cwd=ROOT, env=bare_plugin,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    counts = doc["counts_by_runtime"]["bare"]
    lacks = {r["test"] for r in doc["tests"].values() if r["outcome"] == "not_supported"}
    # what it lacks, and nothing else: op-level cases, per-layer traces and a tokenizer of its own
    assert lacks == {"test_op", "test_layer_divergence", "test_k_eq_v_layer_outputs",
                     "test_tokenizer_ids_equal_llamacpp"}, lacks
    assert counts["failed"] == counts["departure"] == 0 and counts["passed"] >= 50, counts
    assert all(r["runtime"] == "bare" for r in doc["tests"].values() if r["runtime"])
    assert doc["runtimes"]["bare"]["precision"] == "f32"


def _session_privates() -> set[str]:
    """Names of the single-underscore attributes and methods of every session class: the
    base and each runtime's."""
    names = set()
    for path in [ROOT / "g4c" / "session.py", *ROOT.glob("runtimes/*/runtime.py")]:
        for cls in (n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)):
            if not cls.name.endswith("Session"):
                continue
            for node in ast.walk(cls):
                if isinstance(node, ast.FunctionDef) and _private(node.name):
                    names.add(node.name)
                elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self" \
                        and _private(node.attr):
                    names.add(node.attr)
    return names


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_module_outside_runtimes_touches_session_privates():
    privates = _session_privates()
    assert {"_forward", "_forget", "_last"} <= privates
    hits = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("runtimes", ".git", ".nox", ".cache") or rel == Path("g4c/session.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in privates and not (
                    isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                hits.append(f"{rel}:{node.lineno}: .{node.attr}")
    assert not hits, "session internals used outside runtimes/:\n" + "\n".join(hits)


COLLECT = """
import json, sys, pytest
from g4c.conformance.conftest import case_of

class Collect:
    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items):
        self.cases = [case_of(it) for it in items]

c = Collect()
code = pytest.main(["conformance", "--collect-only", "-q", "-p", "no:cacheprovider"], plugins=[c])
print("CASES" + json.dumps(c.cases))
sys.exit(code)
"""


def test_declared_departures_name_existing_cases():
    """A departure that matches no case is stale or misspelt: it would silently excuse nothing."""
    proc = subprocess.run([sys.executable, "-c", COLLECT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    cases = json.loads(proc.stdout.rsplit("CASES", 1)[1])
    found = registry.discover()
    checked = 0
    for name, rt in found.items():
        for dep in registry.capabilities(rt).departures:
            assert any(c["runtime"] == name and dep.case.matches(c["module"], c["test"], c["params"])
                       for c in cases), f"runtime {name}: departure {dep.case} matches no conformance case"
            checked += 1
    assert checked >= 6  # llamacpp's, at least


def test_cases_by_name_and_parameters():
    c = Case.parse("test_greedy_parity[qtype=Q4_0|Q8_0,preset=tiny]")
    assert c.matches("test_greedy", "test_greedy_parity", {"preset": "tiny", "qtype": "Q8_0"})
    assert not c.matches("test_greedy", "test_greedy_parity", {"preset": "tiny", "qtype": "F32"})
    assert not c.matches("test_greedy", "test_greedy_parity", {"qtype": "Q4_0"})  # no preset: no match
    assert Case.parse("test_batch").matches("test_batch", "test_batched_decode_equals_single", {"n_seq": 2})
    assert Case.parse("test_batched_decode_equals_single[n_seq=2]").matches("test_batch", "test_batched_decode_equals_single",
                                                                            {"n_seq": 2})
    assert str(c) == "test_greedy_parity[preset=tiny,qtype=Q4_0|Q8_0]"
    for bad in ("test[x]", "a b", "test[=1]"):
        with pytest.raises(G4CError):
            Case.parse(bad)


def test_malformed_capabilities_are_refused_by_name():
    class Odd:
        name = "odd"
        capabilities = registry.Capabilities(methods=frozenset({"memory_plan"}))

    with pytest.raises(G4CError, match="odd: capabilities.methods declares memory_plan but the runtime has no method"):
        registry.capabilities(Odd())

    class NoRunOp:
        name = "norunop"
        capabilities = registry.Capabilities(ops=frozenset({"rope"}))

    with pytest.raises(G4CError, match="norunop: capabilities.ops declares rope but the runtime has no method run_op"):
        registry.capabilities(NoRunOp())

    class OddOp:
        name = "oddop"
        capabilities = registry.Capabilities(ops=frozenset({"conv2d"}))

        def run_op(self, case, inputs, repeat=0):
            raise AssertionError("never called")

    with pytest.raises(G4CError, match="oddop: capabilities.ops names conv2d, not among dequantize"):
        registry.capabilities(OddOp())

    class Loose:
        name = "loose"
        capabilities = registry.Capabilities(precision="f8")

    with pytest.raises(G4CError, match="loose: capabilities.precision 'f8'"):
        registry.capabilities(Loose())
    class Lower:
        name = "lower"
        capabilities = registry.Capabilities(weight_types=frozenset({"q4_0"}))

    with pytest.raises(G4CError, match="lower: capabilities.weight_types names q4_0, not among F32"):
        registry.capabilities(Lower())
    assert registry.capabilities(object()) == registry.Capabilities()


def test_kv_plan_slots_and_rewinds():
    from g4c.conformance.harness import load_model

    cfg = load_model("tiny").config  # window 32
    sliding, full = cfg.layers[0], cfg.full_layers[0]
    kv = KVPlan.for_model(cfg, 256)
    assert kv.ring == 32
    seqs, pos = np.array([0] * 40 + [1]), np.r_[np.arange(100, 140), 7]
    ring = kv.slots(sliding, seqs, pos, np.array([100, 0]))
    assert (ring[:8] == -1).all() and list(ring[8:10]) == [108 % 32, 109 % 32] and ring[-1] == 7  # last 32 rows kept
    assert list(kv.slots(cfg.layers[full], seqs, pos, np.array([100, 0]))[[0, -1]]) == [0, 7]
    assert list(kv.held(sliding, base=0, before=40)[0]) == list(range(8, 40))
    assert list(kv.held(sliding, base=20, before=40)[0]) == list(range(20, 40))
    assert kv.keeps(0, 48, 47) and not kv.keeps(0, 48, 46) and kv.keeps(30, 48, 31)  # from base: nothing below it is needed
    wide = KVPlan.for_model(cfg, 256, ring_extra=64)
    assert wide.ring == 96 and wide.keeps(0, 200, 135) and not wide.keeps(0, 200, 134)
    assert KVPlan.for_model(cfg, 24).keeps(0, 24, 0)  # max_context within the window: nothing ever wraps
    assert kv.grown(16, 17) == 32 and kv.grown(128, 300) == 256


def test_bare_runtime_gets_defaults():
    sys.path.insert(0, str(ROOT))
    ns: dict = {}
    exec(compile(textwrap.dedent(BARE), "bare_engine", "exec"), ns)
    bare = ns["Bare"]()
    caps = registry.capabilities(bare)
    assert caps == registry.Capabilities() and registry.backend(bare) == "bare" and registry.runs_by_default(bare)


def test_trace_covers_every_micro_batch():
    """A prefill longer than the cpu runtime's micro-batch of 128 rows traces all its rows, each
    against the float64 reference (a trace of the last micro-batch alone has 2 rows)."""
    from g4c.conformance.harness import load_model, prompt, reference_logits
    from g4c import tolerance
    from g4c.compare import nmse
    from g4c.runtimes.cpu import CpuRuntime

    model = load_model("tiny")
    toks = prompt(130, model.n_vocab, seed=12)
    sess = CpuRuntime().load(model, 256, 1, trace=True)
    sess.prefill(list(toks))
    _, ref = reference_logits(model, toks, trace=True)
    limits = tolerance.F32.hidden_nmse(model.config)
    for key, want in ref.items():
        assert sess.trace[key].shape == want.shape, key
        assert nmse(sess.trace[key], want) <= limits[key], key
