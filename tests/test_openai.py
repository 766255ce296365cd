"""The openai runtime: an OpenAI-compatible server checked through greedy completions with
top-k log-probabilities and its own tokenizer.

A fake server (http.server in a thread) answers as llama-server does, from the float64
reference's logits of the tiny fixture, or misbehaves on purpose: a refused connection, HTTP
500, no answer in time, malformed JSON, a text-only prompt schema, tokens named by text. Each
misbehaviour must be one clean error naming the URL and the request. The conformance subset
that needs only tokens and top-k log-probabilities runs through it, the rest reports "not
supported". Real servers on the tiny fixture: llama-cpp-python's llama_cpp.server where its
[server] extra is installed (its tokenizer; its completions take text only, so they are not
supported), and llama.cpp's own llama-server where G4C_LLAMA_SERVER names one (the conformance
subset passes through it).
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from g4c.conformance.harness import load_model, reference_logits
from g4c.errors import InputError, NotSupported
from g4c.fixtures import llamacpp
from g4c.runtime import capabilities, select
from g4c.runtimes.openai import OpenAIRuntime
from g4c.runtimes.openai.runtime import FULL_LOGITS, ServerError
from g4c.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
PROMPT = [2, 300, 301, 302, 200, 200, 17, 455]
HANG_S = 5.0  # how long the fake server sits on a request in "hang" mode; the runtime waits 1 s


class FakeServer(http.server.ThreadingHTTPServer):
    """An OpenAI-compatible server serving `model` under `name`: mode "ok" answers as
    llama-server (ids in logprobs "content"), "vllm" as vLLM (legacy top_logprobs keyed
    "token_id:N"); the other modes misbehave."""

    daemon_threads = True

    def __init__(self, model):
        super().__init__(("127.0.0.1", 0), Handler)
        self.model, self.name, self.mode = model, str(model.path), "ok"
        self.tok = Tokenizer(model)
        self.requests: list[tuple[str, dict | None]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(http.server.BaseHTTPRequestHandler):
    server: FakeServer

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, None))
        if self.path == "/v1/models":
            self._json({"object": "list", "data": [{"id": srv.name, "object": "model", "owned_by": "fake"}]})
        elif self.path == "/props" and srv.mode == "alias":
            self._json({"model_path": str(srv.model.path), "build_info": "b0-fake"})
        else:
            self._json({"error": "not found"}, 404)

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv.requests.append((self.path, body))
        if self.path == "/tokenize" and srv.mode not in ("extras", "no-tokenizer"):
            self._json({"tokens": srv.tok.encode(body["content"], add_bos=body["add_special"])})
        elif self.path == "/extras/tokenize" and srv.mode == "extras":
            self._json({"tokens": srv.tok.encode(body["input"])})
        elif self.path == "/v1/completions":
            self._completion(body)
        else:
            self._json({"error": "not found"}, 404)

    def _completion(self, body):
        srv, mode = self.server, self.server.mode
        if mode == "500":
            return self._json({"error": {"code": 500, "message": "CUDA error: out of memory"}}, 500)
        if mode == "hang":
            time.sleep(HANG_S)
        if mode == "bad-json":
            return self._raw(b"<html>502 Bad Gateway</html>")
        if mode == "reset":  # the connection closed without an answer
            self.close_connection = True
            return None
        if mode == "text-prompt":  # a schema of text prompts only (llama_cpp.server's)
            if isinstance(body["prompt"], str):
                return self._json({"object": "text_completion", "choices": [{"text": "b", "index": 0, "logprobs": None}]})
            return self._json({"detail": [{"type": "string_type", "loc": ["body", "prompt", "str"],
                                           "msg": "Input should be a valid string", "input": body["prompt"]}]}, 422)
        logits = reference_logits(srv.model, tuple(body["prompt"]))[-1]
        lp = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
        top = np.argsort(-lp, kind="stable")[: body["logprobs"]]
        if mode == "no-logprobs":
            logprobs = None
        elif mode in ("ok", "alias"):
            logprobs = {"content": [{"id": int(top[0]), "token": "", "bytes": [], "logprob": float(lp[top[0]]),
                                     "top_logprobs": [{"id": int(i), "token": "", "bytes": [], "logprob": float(lp[i])}
                                                      for i in top]}]}
        else:  # the completions API's own form, tokens keyed as vLLM's return_tokens_as_token_ids, or by text
            name = (lambda i: f"token_id:{i}") if mode == "vllm" else (lambda i: srv.tok.tokens[i])
            logprobs = {"tokens": [name(top[0])], "token_logprobs": [float(lp[top[0]])], "text_offset": [0],
                        "top_logprobs": [{name(i): float(lp[i]) for i in top}]}
        self._json({"object": "text_completion", "model": body["model"],
                    "choices": [{"text": "", "index": 0, "logprobs": logprobs, "finish_reason": "length"}]})

    def _json(self, doc, status=200):
        self._raw(json.dumps(doc).encode(), status)

    def _raw(self, data: bytes, status=200):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


FAKE_COMPLETION = Handler._completion


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


@pytest.fixture(scope="module")
def fake_server(tiny):
    srv = FakeServer(tiny)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def fake(fake_server, monkeypatch):
    """The fake server, behaving (mode "ok"), with the runtime pointed at it."""
    fake_server.mode, fake_server.name = "ok", str(fake_server.model.path)
    fake_server.requests.clear()
    monkeypatch.setenv("G4C_OPENAI_BASE_URL", fake_server.url)
    monkeypatch.setenv("G4C_OPENAI_MODEL", fake_server.name)
    monkeypatch.delenv("G4C_OPENAI_TIMEOUT", raising=False)
    return fake_server


def _free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- what a behaving server gives ----------------------------------------------------------------
@pytest.mark.parametrize("mode", ["ok", "vllm"])
def test_top_logprobs_are_the_servers(fake, tiny, mode):
    fake.mode = mode
    rt = OpenAIRuntime()
    assert rt.availability().ok
    sess = rt.load(tiny, 64)
    ids, logprobs = sess.top_logprobs(PROMPT, 5, first=5)
    assert ids.shape == logprobs.shape == (3, 5)
    for row, end in enumerate(range(6, len(PROMPT) + 1)):
        ref = reference_logits(tiny, tuple(PROMPT[:end]))[-1]
        want = np.argsort(-ref, kind="stable")[:5]
        assert ids[row].tolist() == want.tolist()
        np.testing.assert_allclose(logprobs[row], ref[want] - np.log(np.exp(ref - ref.max()).sum()) - ref.max(), atol=1e-9)
    sent = [b for path, b in fake.requests if path == "/v1/completions"]
    assert [b["prompt"] for b in sent] == [PROMPT[:6], PROMPT[:7], PROMPT]  # token ids, not text
    assert all(b["temperature"] == 0 and b["max_tokens"] == 1 and b["logprobs"] == 5 for b in sent)


def test_declares_top_k_only_and_runs_only_when_named(fake, tiny):
    caps = capabilities(OpenAIRuntime())
    assert caps.logits == "top_k" and caps.explicit_only and not caps.trace
    sess = OpenAIRuntime().load(tiny, 64)
    for call in (lambda: sess.prefill(PROMPT), lambda: sess.decode([5]), lambda: sess.logits):
        with pytest.raises(NotSupported, match="gives the log-probabilities of its top tokens, not full logits"):
            call()
    assert "openai" in select(["openai"]) and "openai" not in select([])


def test_session_input_is_checked_before_any_request(fake, tiny):
    sess = OpenAIRuntime().load(tiny, 8)
    for args, msg in (([[2, 512], 3], "token id 512 at index 1 is out of range"), (([], 3), "empty prompt"),
                      ((PROMPT, 0), "k must be at least 1"), ((PROMPT, 3, 8), "first 8 must be a position"),
                      ((PROMPT + [5], 3), "9 tokens exceed the session's max_context 8")):
        with pytest.raises(InputError, match=msg):
            sess.top_logprobs(*args)
    with pytest.raises(InputError, match="max_context 0 must be in"):
        OpenAIRuntime().load(tiny, 0)
    assert not [r for r in fake.requests if r[0] == "/v1/completions"]


def test_only_the_served_model_loads(fake, tiny, monkeypatch):
    other = load_model("tiny", "Q8_0")
    with pytest.raises(NotSupported, match=f"serves {tiny.path}, not {other.path}"):
        OpenAIRuntime().load(other, 64)
    fake.name = "gemma4-tiny"  # an alias: which file? llama-server's /props says
    monkeypatch.setenv("G4C_OPENAI_MODEL", "gemma4-tiny")
    with pytest.raises(NotSupported, match="names its model 'gemma4-tiny', which is no file on this machine"):
        OpenAIRuntime().load(tiny, 64)
    fake.mode = "alias"
    OpenAIRuntime().load(tiny, 64)
    assert OpenAIRuntime().settings()["build_info"] == "b0-fake"


def test_tokenize_through_the_servers_endpoint(fake, tiny):
    gold = llamacpp.load("tiny-f32")["tokenizer"]
    rt = OpenAIRuntime()
    assert [rt.tokenize(tiny, s) for s in gold["strings"]] == gold["ids"]
    fake.mode = "extras"  # llama_cpp.server's endpoint
    assert rt.tokenize(tiny, "hello world") == gold["ids"][0]
    assert [p for p, _ in fake.requests[-2:]] == ["/tokenize", "/extras/tokenize"]
    fake.mode = "no-tokenizer"
    with pytest.raises(NotSupported, match=r"has no tokenizer endpoint \(tried /tokenize, /extras/tokenize\)"):
        rt.tokenize(tiny, "abc")


def test_settings_name_the_server(fake):
    got = OpenAIRuntime().settings()
    assert got["base_url"] == fake.url and got["model"] == fake.name
    assert got["model_entry"]["owned_by"] == "fake" and got["server"].startswith("BaseHTTP")


# -- what a server cannot give, and what a failing one does ------------------------------------
@pytest.mark.parametrize("mode,match", [
    ("text-prompt", r"takes only text prompts \(POST {url}/completions \(prompt=\[8 token ids\], max_tokens=1, "
                    r"logprobs=3\) answered HTTP 422 Unprocessable Entity: .*string_type.*\); the suite's prompts are "
                    r"token ids"),
    ("text-keys", r"names its top tokens only by their text \('.*', ...\), which several tokens may share"),
])
def test_text_only_servers_are_not_supported(fake, tiny, mode, match):
    fake.mode = mode
    with pytest.raises(NotSupported, match=match.format(url=fake.url)):
        OpenAIRuntime().load(tiny, 64).top_logprobs(PROMPT, 3, first=7)


def test_failure_on_long_prompt_is_not_taken_for_text_only(fake, tiny, monkeypatch):
    """An HTTP error that a one-token id prompt does not repeat (a prompt over the server's
    context, say) is the server's failure, not a text-only schema."""
    monkeypatch.setattr(Handler, "_completion", lambda self, body: (
        self._json({"error": "the request exceeds the available context size"}, 400) if len(body["prompt"]) > 1
        else FAKE_COMPLETION(self, body)))
    with pytest.raises(ServerError, match=r"answered HTTP 400 Bad Request: {\"error\": \"the request exceeds"):
        OpenAIRuntime().load(tiny, 64).top_logprobs(PROMPT, 3, first=7)


@pytest.mark.parametrize("mode,why", [
    ("500", ' answered HTTP 500 Internal Server Error: {"error": {"code": 500, "message": "CUDA error: out of memory"}}'),
    ("hang", ": no answer within 1 s (G4C_OPENAI_TIMEOUT)"),
    ("bad-json", " answered malformed JSON: b'<html>502 Bad Gateway</html>'"),
    ("reset", " failed: RemoteDisconnected: Remote end closed connection without response"),
    ("no-logprobs", ' answered logprobs in neither form the suite reads ("content" entries with ids, or "top_logprobs" '
                    'keyed by "token_id:N"): null'),
], ids=lambda v: v if " " not in v else "")
def test_server_failures_are_one_clean_error(fake, tiny, monkeypatch, mode, why):
    monkeypatch.setenv("G4C_OPENAI_TIMEOUT", "1")
    sess = OpenAIRuntime().load(tiny, 64)
    fake.mode = mode
    start = time.monotonic()
    with pytest.raises(ServerError) as e:
        sess.top_logprobs(PROMPT, 3, first=7)
    assert time.monotonic() - start < HANG_S - 1  # the runtime gave up, not the server
    assert str(e.value) == f"POST {fake.url}/completions (prompt=[8 token ids], max_tokens=1, logprobs=3)" + why


def test_server_gone_is_unavailable_and_a_clean_error(tiny, monkeypatch):
    srv = FakeServer(tiny)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("G4C_OPENAI_BASE_URL", srv.url)
    monkeypatch.setenv("G4C_OPENAI_MODEL", srv.name)
    sess = OpenAIRuntime().load(tiny, 64)
    srv.shutdown()
    srv.server_close()  # gone mid-run: nothing listens on its port any more
    av = OpenAIRuntime().availability()
    assert not av.ok and av.reason == f"GET {srv.url}/models failed: [Errno 111] Connection refused"
    with pytest.raises(ServerError, match=rf"^POST {srv.url}/completions \(prompt=\[8 token ids\], max_tokens=1, "
                                          r"logprobs=3\) failed: \[Errno 111\] Connection refused$"):
        sess.top_logprobs(PROMPT, 3, first=7)


@pytest.mark.parametrize("env,reason", [
    ({"G4C_OPENAI_BASE_URL": ""}, "no server: pass --base-url URL (e.g. http://127.0.0.1:8080/v1) or set "
                                  "G4C_OPENAI_BASE_URL"),
    ({"G4C_OPENAI_BASE_URL": "127.0.0.1:8080/v1"}, "G4C_OPENAI_BASE_URL '127.0.0.1:8080/v1' must be an http:// or "
                                                   "https:// URL with a host"),
    ({"G4C_OPENAI_MODEL": ""}, "no served model: pass --served-model NAME (as GET {url}/models lists it) or set "
                               "G4C_OPENAI_MODEL"),
    ({"G4C_OPENAI_MODEL": "gemma-4-12b"}, "the server at {url} does not serve G4C_OPENAI_MODEL='gemma-4-12b' (it lists "
                                          "'{name}')"),
    ({"G4C_OPENAI_TIMEOUT": "soon"}, "G4C_OPENAI_TIMEOUT 'soon' must be a number of seconds above 0"),
])
def test_unavailable_names_the_setting(fake, monkeypatch, env, reason):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    av = OpenAIRuntime().availability()
    assert not av.ok and av.reason == reason.format(url=fake.url, name=fake.name)


# -- the conformance suite through it -------------------------------------------------------------
TOP_K_CASES = ("test_greedy_parity", "test_llamacpp_golden", "test_tokenizer_ids_equal_llamacpp")
TOP_K_PASSES = {"test_greedy_parity[preset=tiny,qtype=F32]", "test_llamacpp_golden[preset=tiny,qtype=F32]",
                "test_tokenizer_ids_equal_llamacpp"}


def conformance(tmp_path, url: str, model: str, *cases: str) -> dict:
    """pytest on conformance/ with --runtime openai and these --case selections: the results by case id."""
    out = tmp_path / "results.json"
    cmd = [sys.executable, "-m", "pytest", "conformance", "-q", "-p", "no:cacheprovider", "--runtime", "openai",
           "--base-url", url, "--served-model", model, "--results-json", str(out)]
    proc = subprocess.run(cmd + [a for c in cases for a in ("--case", c)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={k: v for k, v in os.environ.items() if not k.startswith("G4C_OPENAI_")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {t["case"]: t for t in json.loads(out.read_text())["tests"].values()}


def test_conformance_runs_what_top_k_allows(fake, tmp_path):
    """The cases that need only greedy tokens, top-1 and the tokenizer pass through a server
    that computes the reference's logits; those needing full logits or another model report
    not supported, with the reason; none fails."""
    tests = conformance(tmp_path, fake.url, fake.name, *TOP_K_CASES, "test_dense_logits",
                        "test_batched_decode_equals_single[n_seq=2]")
    passed = {c for c, t in tests.items() if t["outcome"] == "passed"}
    assert passed == TOP_K_PASSES
    assert tests["test_greedy_parity[preset=tiny,qtype=F32]"]["metrics"]["greedy_tokens_equal"] == 64
    assert {t["outcome"] for c, t in tests.items() if c not in passed} == {"not_supported"}
    for case in ("test_dense_logits[variant=12b-like]", "test_batched_decode_equals_single[n_seq=2]"):  # the tiny file
        assert tests[case]["reason"] == f"not supported: {FULL_LOGITS}"
    assert tests["test_greedy_parity[preset=tiny,qtype=Q8_0]"]["reason"] == (
        f"not supported: the server at {fake.url} serves {fake.model.path}, not {load_model('tiny', 'Q8_0').path}")


# -- a real server ---------------------------------------------------------------------------------
SERVER_MODULES = ("llama_cpp", "fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings")


@pytest.fixture(scope="module")
def llama_cpp_server(tiny, tmp_path_factory):
    """llama-cpp-python's OpenAI-compatible server on the tiny fixture, in a child process."""
    absent = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
    if absent:
        pytest.skip(f"llama_cpp.server needs {', '.join(absent)}: pip install 'llama-cpp-python[server]==0.3.36'")
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(tiny.path), "--host",
                                 "127.0.0.1", "--port", str(port), "--n_ctx", "512"], stdout=err, stderr=err)
    url = f"http://127.0.0.1:{port}/v1"
    _wait_for(proc, url, log)
    yield proc, url
    proc.kill()
    proc.wait()


def _wait_for(proc, url: str, log: Path) -> None:
    """Until the server started as proc answers GET /models (2 minutes at most)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=5).read()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"{proc.args[0]} did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)


@pytest.fixture
def real(llama_cpp_server, tiny, monkeypatch):
    proc, url = llama_cpp_server
    monkeypatch.setenv("G4C_OPENAI_BASE_URL", url)
    monkeypatch.setenv("G4C_OPENAI_MODEL", str(tiny.path))
    monkeypatch.delenv("G4C_OPENAI_TIMEOUT", raising=False)
    return proc, url


def test_real_server_tokenizer_equals_llamacpp(real, tiny):
    """Its /extras/tokenize gives llama.cpp's ids for the tiny fixture's strings."""
    rt = OpenAIRuntime()
    assert rt.availability().ok
    assert rt.settings()["server"] == "uvicorn"
    gold = llamacpp.load("tiny-f32")["tokenizer"]
    assert [rt.tokenize(tiny, s) for s in gold["strings"]] == gold["ids"]


def test_real_server_text_only_prompts_are_not_supported(real, tiny):
    """llama_cpp.server's completions take text only: the token-level tests are not
    supported there, with the server's own refusal quoted."""
    _, url = real
    with pytest.raises(NotSupported, match=rf"^the server at {url} takes only text prompts \(POST {url}/completions "
                                           r"\(prompt=\[8 token ids\], .* answered HTTP 500 .*'prompt'.*\); the "
                                           r"suite's prompts are token ids$"):
        OpenAIRuntime().load(tiny, 64).top_logprobs(PROMPT, 3, first=7)


def test_real_server_killed_is_a_clean_error(real, tiny):
    proc, url = real
    sess = OpenAIRuntime().load(tiny, 64)
    proc.kill()
    proc.wait()
    assert OpenAIRuntime().availability().reason == f"GET {url}/models failed: [Errno 111] Connection refused"
    with pytest.raises(ServerError, match=rf"^POST {url}/completions \(prompt=\[8 token ids\], max_tokens=1, "
                                          r"logprobs=3\) failed: \[Errno 111\] Connection refused$"):
        sess.top_logprobs(PROMPT, 3, first=7)


# llama.cpp's own server, where one is built: G4C_LLAMA_SERVER names the binary
@pytest.fixture(scope="module")
def llama_server(tiny, tmp_path_factory):
    """llama.cpp's llama-server on the tiny fixture, in a child process."""
    binary = os.environ.get("G4C_LLAMA_SERVER")
    if not binary:
        pytest.skip("no llama-server: set G4C_LLAMA_SERVER to one built from llama-cpp-python's vendored llama.cpp "
                    "(nox -s conformance-openai builds it)")
    port = _free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([binary, "-m", str(tiny.path), "--host", "127.0.0.1", "--port", str(port), "-c", "512",
                                 "-np", "1", "-t", "2"], stdout=err, stderr=err)
    url = f"http://127.0.0.1:{port}/v1"
    _wait_for(proc, url, log)
    yield url
    proc.kill()
    proc.wait()


def test_llama_server_passes_what_top_k_allows(llama_server, tiny, tmp_path):
    """Through llama.cpp's own server (token-id prompts, top log-probabilities by id): greedy
    parity with the float64 reference, parity with llama.cpp's golden and its tokenizer pass
    on the fixture it serves."""
    tests = conformance(tmp_path, llama_server, str(tiny.path), *TOP_K_CASES)
    assert {c for c, t in tests.items() if t["outcome"] == "passed"} == TOP_K_PASSES
    assert tests["test_llamacpp_golden[preset=tiny,qtype=F32]"]["metrics"]["greedy_tokens_equal"] == 64
