"""An OpenAI-compatible server as a runtime: engines that serve (llama.cpp's llama-server,
vLLM, SGLang, llama-cpp-python's llama_cpp.server), checked through what such a server gives.

    G4C_OPENAI_BASE_URL=http://127.0.0.1:8080/v1 G4C_OPENAI_MODEL=/path/to/model.gguf \\
        pytest conformance --runtime openai

A server gives the log-probabilities of its top tokens, not every logit and no per-layer
trace. So the runtime declares logits="top_k": its sessions answer

    top_logprobs(tokens, k, first=0) -> (ids int64 (n - first, k), logprobs float64 (n - first, k))

row j holding the k most probable tokens after tokens[:first + j + 1], most probable first,
each row one greedy completion request (temperature 0, one token, `logprobs` k, end of
generation ignored); prefill, decode and logits raise NotSupported, so the tests that need
full logits or traces report "not supported" and those that need only greedy tokens and top-k
log-probabilities run. Prompts go as token ids (the completions API's array-of-integers
prompt) and answers must name tokens by id (llama-server's logprobs "content" entries, or
vLLM's "token_id:N" with return_tokens_as_token_ids): a server that takes only text prompts or
names tokens only by their text (llama_cpp.server) is NotSupported there, since text is
tokenized again on the server and several tokens may share one text.

A server serves one model: a session loads only that file (the same file, or a copy with the
same sha256), and a test of any other model is not supported. The served file is
G4C_OPENAI_MODEL where that is a path on this machine (servers name a model by the path they
loaded unless given an alias), else the model_path of llama-server's /props.

tokenize(model, text) is the server's own tokenizer: /tokenize (llama-server, vLLM) or
/extras/tokenize (llama_cpp.server). Each request waits at most G4C_OPENAI_TIMEOUT seconds; a
refused connection, an HTTP error, a timeout or an answer that is not the JSON expected is a
ServerError naming the URL and the request.
"""

from __future__ import annotations

import http.client
import json
import math
import operator
import os
import urllib.error
import urllib.parse
import urllib.request
from functools import lru_cache
from pathlib import Path

import numpy as np

from g4c.errors import G4CError, InputError, NotSupported
from g4c.model import Model
from g4c.runtime import Availability, Capabilities, env_seconds
from g4c.session import check_load, check_tokens

BASE_URL_ENV = "G4C_OPENAI_BASE_URL"
MODEL_ENV = "G4C_OPENAI_MODEL"
TIMEOUT_ENV = "G4C_OPENAI_TIMEOUT"
# seconds per request: a one-token completion on a 2-core CI machine's llama-server takes
# milliseconds on the tiny fixtures; a 12B prompt's first evaluation on a CPU server, minutes
DEFAULT_TIMEOUT = 120.0
SHOWN = 300  # characters of a server's answer that an error quotes
FULL_LOGITS = ("an OpenAI-compatible server gives the log-probabilities of its top tokens, not full logits "
               "(runtime openai)")
# where servers keep their tokenizer, beside /v1: (path, body) for text, tried in this order
TOKENIZE = (
    # llama-server reads content/add_special/parse_special, vLLM and SGLang prompt/add_special_tokens
    ("/tokenize", lambda model, text: {"content": text, "add_special": True, "parse_special": True,
                                       "model": model, "prompt": text, "add_special_tokens": True}),
    ("/extras/tokenize", lambda model, text: {"input": text, "model": model}),  # llama_cpp.server
)


class ServerError(G4CError):
    """The server refused the connection, answered an HTTP error (its status kept), did not
    answer in time, or answered something other than the JSON expected; the message names the
    URL and the request."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class OpenAIRuntime:
    """Sessions of the model an OpenAI-compatible server serves (G4C_OPENAI_BASE_URL,
    G4C_OPENAI_MODEL); runs only when named."""

    name = "openai"
    capabilities = Capabilities(explicit_only=True, logits="top_k", methods=frozenset({"settings", "tokenize"}),
                                backend="OpenAI-compatible server")

    def availability(self) -> Availability:
        """Whether the server answers GET /models and lists the served model."""
        try:
            _server().entry()
        except G4CError as e:
            return Availability(False, str(e))
        return Availability(True)

    def settings(self) -> dict:
        """What results depend on: the URL, the served model as /models lists it, the server's
        name (its Server header) and llama-server's build where /props gives it."""
        srv = _server()
        props = srv.props()
        return {"base_url": srv.base_url, "model": srv.model, "model_entry": srv.entry(), "server": srv.header("Server"),
                "build_info": props.get("build_info"), "model_path": props.get("model_path")}

    def load(self, model: Model, max_context: int, n_seq: int = 1, trace: bool = False) -> "OpenAISession":
        check_load(model, max_context, n_seq)
        srv = _server()
        srv.check_serves(model)
        return OpenAISession(srv, model, max_context, n_seq)

    def tokenize(self, model: Model, text: str) -> list[int]:
        """The server's own token ids for text (BOS as the model adds it, special tokens parsed)."""
        srv = _server()
        srv.check_serves(model)
        return srv.tokenize(text)


class OpenAISession:
    """A session over a stateless server: every call sends its whole prompt (the server's
    prompt cache keeps repeated prefixes cheap)."""

    trace = None

    def __init__(self, server: "Server", model: Model, max_context: int, n_seq: int):
        self.server, self.model = server, model
        self.max_context, self.n_seq, self.n_vocab = max_context, n_seq, model.n_vocab

    def top_logprobs(self, tokens, k: int, first: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The k most probable tokens and their log-probabilities after each prefix
        tokens[:i + 1], i from first to the end, most probable first."""
        toks = check_tokens(tokens, self.n_vocab).tolist()
        k, first = operator.index(k), operator.index(first)
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}")
        if not 0 <= first < len(toks):
            raise InputError(f"first {first} must be a position of the {len(toks)} tokens")
        if len(toks) > self.max_context:
            raise InputError(f"{len(toks)} tokens exceed the session's max_context {self.max_context}")
        ids = np.empty((len(toks) - first, k), np.int64)
        logprobs = np.empty((len(toks) - first, k), np.float64)
        for row, end in enumerate(range(first + 1, len(toks) + 1)):
            ids[row], logprobs[row] = self.server.next_token(toks[:end], k, self.n_vocab)
        return ids, logprobs

    def prefill(self, tokens, start_pos: int = 0, seq: int = 0, all_logits: bool = True) -> np.ndarray:
        raise NotSupported(FULL_LOGITS)

    def decode(self, tokens) -> np.ndarray:
        raise NotSupported(FULL_LOGITS)

    @property
    def logits(self) -> np.ndarray:
        raise NotSupported(FULL_LOGITS)

    def reset(self, seq: int | None = None) -> None:
        """Nothing to forget: the server holds no sequence of ours between requests."""


class Server:
    """One server and the model it serves, as G4C_OPENAI_BASE_URL and G4C_OPENAI_MODEL name them."""

    def __init__(self, base_url: str, model: str, timeout: float):
        self.base_url, self.model, self.timeout = base_url, model, timeout
        # its tokenizer endpoints beside /v1 (llama-server, vLLM and llama_cpp.server all serve the
        # API under /v1 and the rest at the root)
        self.root = base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url
        # no proxy from the environment: the server under test answers itself (a proxy would turn
        # a refused connection into its own 502)
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._headers: http.client.HTTPMessage | None = None

    # -- what it serves ----------------------------------------------------------------------
    def entry(self) -> dict:
        """The served model's entry in GET /models; ServerError if the server does not list it."""
        ans = self._call("GET", f"{self.base_url}/models")
        data = ans.get("data") if isinstance(ans, dict) else None
        if not isinstance(data, list) or not all(isinstance(m, dict) for m in data):
            raise ServerError(f"GET {self.base_url}/models answered without a \"data\" list of models: {_shown(ans)}")
        for m in data:
            if m.get("id") == self.model:
                return m
        listed = ", ".join(repr(m.get("id")) for m in data) or "none"
        raise ServerError(f"the server at {self.base_url} does not serve {MODEL_ENV}={self.model!r} (it lists {listed})")

    def props(self) -> dict:
        """llama-server's GET /props (build_info, model_path); {} from a server without it."""
        ans = self._call("GET", f"{self.root}/props", missing_ok=True)
        return ans if isinstance(ans, dict) else {}

    def header(self, name: str) -> str | None:
        """A header of the server's last answer (Server: llama.cpp, uvicorn, ...)."""
        return self._headers.get(name) if self._headers is not None else None

    def served_file(self) -> Path:
        """The GGUF the server serves: G4C_OPENAI_MODEL when it is a file here, else /props'
        model_path; NotSupported when neither names one."""
        for candidate in (self.model, self.props().get("model_path")):
            if isinstance(candidate, str) and os.path.isfile(candidate):
                return Path(candidate)
        raise NotSupported(f"the server at {self.base_url} names its model {self.model!r}, which is no file on this "
                           f"machine, so the suite cannot tell which tests are of its model: serve the GGUF under its "
                           f"path (the default of llama-server, llama_cpp.server and vLLM) and set {MODEL_ENV} to it")

    def check_serves(self, model: Model) -> None:
        """NotSupported unless the server serves this model's file (or a byte-identical copy)."""
        self.entry()
        served = self.served_file()
        if not _same_file(served, Path(model.path)):
            raise NotSupported(f"the server at {self.base_url} serves {served}, not {model.path}")

    # -- what it computes --------------------------------------------------------------------
    def next_token(self, prompt: list[int], k: int, n_vocab: int) -> tuple[list[int], list[float]]:
        """The k most probable next tokens after prompt and their log-probabilities, from one
        greedy completion of one token."""
        url = f"{self.base_url}/completions"
        what = f"POST {url} (prompt=[{len(prompt)} token ids], max_tokens=1, logprobs={k})"
        body = {"model": self.model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0, "logprobs": k,
                "stream": False,
                # the distribution at every position, an end-of-generation token included (llama-server,
                # vLLM, SGLang), and tokens named by id (vLLM)
                "ignore_eos": True, "return_tokens_as_token_ids": True}
        try:
            ans = self._call("POST", url, body, what)
        except ServerError as e:
            if e.status is not None and self._takes_text_only(prompt[0]):
                raise NotSupported(f"the server at {self.base_url} takes only text prompts ({e}); the suite's "
                                   "prompts are token ids") from None
            raise
        top = _top_logprobs(ans, what, self.base_url)
        if len(top) < min(k, n_vocab):
            raise ServerError(f"{what} answered {len(top)} top log-probabilities, not {k}: {_shown(ans)}")
        for tok, lp in top:
            if not 0 <= tok < n_vocab or not math.isfinite(lp):
                raise ServerError(f"{what} answered token {tok} with log-probability {lp}: a token id must be in "
                                  f"0..{n_vocab - 1} and a log-probability finite")
        top.sort(key=lambda e: -e[1])
        return [t for t, _ in top[:k]], [lp for _, lp in top[:k]]

    def _takes_text_only(self, token: int) -> bool:
        """After an HTTP error to a token-id prompt: whether the server refuses a one-token id
        prompt too and answers a text one (a schema of text prompts only, as llama_cpp.server's),
        rather than failing on this request (a prompt too long, a crash)."""
        url, probe = f"{self.base_url}/completions", {"model": self.model, "max_tokens": 1, "temperature": 0.0}
        for prompt, answered in (([token], False), ("a", True)):
            try:
                self._call("POST", url, {**probe, "prompt": prompt})
                return answered
            except ServerError:
                continue
        return False

    def tokenize(self, text: str) -> list[int]:
        """The server's ids for text, from the first tokenizer endpoint it has."""
        tried = []
        for path, body in TOKENIZE:
            url = f"{self.root}{path}"
            what = f"POST {url} ({len(text)} characters)"
            ans = self._call("POST", url, body(self.model, text), what, missing_ok=True)
            if ans is None:
                tried.append(path)
                continue
            toks = ans.get("tokens") if isinstance(ans, dict) else None
            if not isinstance(toks, list) or not all(map(_is_int, toks)):
                raise ServerError(f"{what} answered without a \"tokens\" list of integers: {_shown(ans)}")
            return toks
        raise NotSupported(f"the server at {self.root} has no tokenizer endpoint (tried {', '.join(tried)})")

    # -- HTTP ------------------------------------------------------------------------------------
    def _call(self, method: str, url: str, body: dict | None = None, what: str | None = None, missing_ok: bool = False):
        """The JSON answer of one request (None for a 404 where missing_ok: an endpoint this
        server lacks); ServerError naming what otherwise."""
        what = what or f"{method} {url}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                self._headers = resp.headers
                raw = resp.read()
        except urllib.error.HTTPError as e:
            if e.code == 404 and missing_ok:
                return None
            text = e.read().decode("utf-8", "replace")
            raise ServerError(f"{what} answered HTTP {e.code} {e.reason}: {text[:SHOWN]}", e.code) from None
        except TimeoutError:
            raise ServerError(f"{what}: no answer within {self.timeout:g} s ({TIMEOUT_ENV})") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):  # while connecting
                raise ServerError(f"{what}: no connection within {self.timeout:g} s ({TIMEOUT_ENV})") from None
            raise ServerError(f"{what} failed: {e.reason}") from None
        except (OSError, http.client.HTTPException) as e:  # reset, closed mid-answer, not HTTP at all
            raise ServerError(f"{what} failed: {type(e).__name__}: {e}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise ServerError(f"{what} answered malformed JSON: {raw[:SHOWN]!r}") from None


def _top_logprobs(ans, what: str, base_url: str) -> list[tuple[int, float]]:
    """(id, log-probability) of the top tokens of the one completion token, from either form a
    server gives: llama-server's {"content": [{"id", "top_logprobs": [{"id", "logprob"}]}]}, or the
    completions API's {"top_logprobs": [{token: logprob}]}, whose tokens must be "token_id:N"."""
    try:
        lp = ans["choices"][0]["logprobs"]
    except (KeyError, IndexError, TypeError):
        raise ServerError(f"{what} answered without choices[0].logprobs: {_shown(ans)}") from None
    unreadable = ServerError(f"{what} answered logprobs in neither form the suite reads (\"content\" entries with "
                             f"ids, or \"top_logprobs\" keyed by \"token_id:N\"): {_shown(lp)}")
    if not isinstance(lp, dict):
        raise unreadable
    try:
        if isinstance(lp.get("content"), list):
            top = [(e["id"], e["logprob"]) for e in lp["content"][0]["top_logprobs"]]
        else:
            named = lp["top_logprobs"][0]
            if any(not key.startswith("token_id:") for key in named):
                raise NotSupported(f"the server at {base_url} names its top tokens only by their text "
                                   f"({', '.join(map(repr, list(named)[:3]))}, ...), which several tokens may share: "
                                   "the suite needs their ids")
            top = [(int(key.removeprefix("token_id:")), v) for key, v in named.items()]
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        raise unreadable from None
    if not all(_is_int(tok) and _is_number(v) for tok, v in top):
        raise unreadable
    return top


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _shown(value) -> str:
    return json.dumps(value)[:SHOWN]


def _same_file(a: Path, b: Path) -> bool:
    if os.path.samefile(a, b):
        return True
    return a.stat().st_size == b.stat().st_size and _sha256(a) == _sha256(b)


@lru_cache(maxsize=None)
def _sha256(path: Path) -> str:
    from g4c.fixtures.golden import sha256

    return sha256(path)


def _server() -> Server:
    """The server of G4C_OPENAI_BASE_URL, G4C_OPENAI_MODEL and G4C_OPENAI_TIMEOUT; G4CError
    naming the variable that is missing or unusable."""
    url = os.environ.get(BASE_URL_ENV, "").strip().rstrip("/")
    if not url:
        raise G4CError(f"no server: pass --base-url URL (e.g. http://127.0.0.1:8080/v1) or set {BASE_URL_ENV}")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise G4CError(f"{BASE_URL_ENV} {url!r} must be an http:// or https:// URL with a host")
    model = os.environ.get(MODEL_ENV, "").strip()
    if not model:
        raise G4CError(f"no served model: pass --served-model NAME (as GET {url}/models lists it) or set {MODEL_ENV}")
    timeout = env_seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT)
    return _servers(url, model, timeout)


@lru_cache(maxsize=None)
def _servers(url: str, model: str, timeout: float) -> Server:
    return Server(url, model, timeout)
