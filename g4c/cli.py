"""g4c: the suite's command line.

    g4c run [--runtime R] [--model FILE]     conformance of the available runtimes
    g4c header MODEL.gguf                    the Phase 0 markdown header dump
    g4c generate MODEL.gguf --text "..."     greedy generation (--chat "..." through the chat template, --tokens ids)
    g4c golden MODEL.gguf --text "..." --out F.json   greedy tokens, top-k logits and ids from llama.cpp
    g4c fixture PRESET [--type T]            write a synthetic Gemma 4 GGUF (12b: ~7 GB)
    g4c check MODEL.gguf                     validate a file and scan every weight for NaN/inf
    g4c plan MODEL.gguf --memory 12GiB       memory per runtime and the largest context that fits
    g4c runtimes                             registered runtimes and whether their device is present
    g4c serve --runtime NAME                 a runtime behind the engine protocol on stdin/stdout (docs/engine-protocol.md)
    g4c report [RESULTS ...] [--out F.html]  the HTML report of result files (default: report.html)

Errors of the suite's own hierarchy print as one line naming the file, key or tensor,
with exit code 2; Ctrl-C exits 130. g4c run has more codes (1 a test failed, 3 the suite
could not run, 143 SIGTERM): `g4c run --help` and g4c/run.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .errors import G4CError, InputError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="g4c", description="Gemma 4 conformance and benchmark suite")
    sub = parser.add_subparsers(dest="command", required=True)

    from .run import add_parser as add_run_parser

    add_run_parser(sub)
    from .serve import add_parser as add_serve_parser

    add_serve_parser(sub)

    p = sub.add_parser("header", help="print the markdown header dump of a GGUF")
    p.add_argument("model")

    p = sub.add_parser("generate", help="greedy generation from text, a chat message or token ids")
    p.add_argument("model")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="prompt text, tokenized by the file's own vocabulary (BOS added)")
    src.add_argument("--chat", help="a user message, rendered through tokenizer.chat_template")
    src.add_argument("--tokens", help="comma-separated prompt token ids")
    p.add_argument("-n", type=_count, default=32, help="tokens to generate (default: %(default)s)")
    p.add_argument("--runtime", default="cpu")
    p.add_argument("--max-context", type=_count, default=4096)

    p = sub.add_parser("golden", help="write a golden file from llama.cpp (needs the llamacpp extra)")
    p.add_argument("model")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="prompt text, tokenized by llama.cpp")
    src.add_argument("--tokens", help="comma-separated prompt token ids")
    p.add_argument("-n", type=_count, default=32, help="greedy tokens (default: %(default)s)")
    p.add_argument("--strings", help="JSON list of strings whose llama.cpp token ids go into the golden too")
    p.add_argument("--out", required=True)

    p = sub.add_parser("fixture", help="write a synthetic Gemma 4 GGUF")
    p.add_argument("preset")
    p.add_argument("--type", default=None, help="weight type of the matrices (F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q4_K, Q5_K, Q6_K)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output path (default: the fixture cache; the path is printed)")

    p = sub.add_parser("plan", help="memory a runtime needs for a model, and the largest context that fits")
    p.add_argument("model")
    p.add_argument("--memory", type=_memory_size, required=True, help="budget with its unit, e.g. 12GiB or 80GB")
    p.add_argument("--runtime", default="cpu")
    p.add_argument("--n-seq", type=_count, default=1)
    p.add_argument("--context", type=_count, action="append", default=[], help="also show the plan at this context")

    p = sub.add_parser("check", help="validate a GGUF: header, keys, shapes, and every weight finite")
    p.add_argument("model")

    sub.add_parser("runtimes", help="list registered runtimes")

    p = sub.add_parser("report", help="the HTML report of result files: conformance, benchmarks, op perf, fault catches")
    p.add_argument("inputs", nargs="*", metavar="RESULTS",
                   help="result files or folders of them (default: ./reports/data and ./reports/out where they exist, "
                        "else ./conformance-results.json)")
    p.add_argument("--out", default="report.html", help="the HTML file to write (default: %(default)s)")

    args = parser.parse_args(argv)
    try:
        return _quiet_when_stdout_closes(COMMANDS[args.command], args)
    except G4CError as e:
        print(f"g4c {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"g4c {args.command}: interrupted", file=sys.stderr)
        return 130


def _quiet_when_stdout_closes(command, args) -> int:
    """The command's exit code, or 141 without a traceback when whoever reads its output
    stops early (g4c runtimes | head -1): 128 + SIGPIPE, the status a shell shows for any
    program cut off by its pipe, so that a pipeline does not read as the complete output."""
    try:
        code = command(args)
        sys.stdout.flush()  # a closed pipe shows here rather than in the interpreter's flush at exit
        return code
    except BrokenPipeError:
        # the interpreter flushes stdout again at exit, which would fail the same way
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _count(text: str) -> int:
    """argparse type of counts and lengths (-n, --n-seq, --max-context, --context): 1 or more."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {n}")
    return n


def _memory_size(text: str) -> int:
    from .plan import parse_bytes

    try:
        return parse_bytes(text)
    except G4CError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_header(args) -> int:
    from .header import render
    from .model import Model

    sys.stdout.write(render(Model(args.model)))
    return 0


def cmd_plan(args) -> int:
    from .model import Model
    from .plan import GIB, largest_context
    from .runtime import get, has_method

    model = Model(args.model)
    budget = args.memory
    rt = get(args.runtime)
    if not has_method(rt, "memory_plan"):
        raise G4CError(f"runtime {args.runtime} declares no memory_plan")
    planner = rt.memory_plan
    n_max = model.config.n_ctx_train
    plan_at = lambda n: planner(model, n, args.n_seq)  # noqa: E731
    contexts = sorted(set(args.context or [4096, 8192, 32768, 131072, n_max]))
    print(f"{model.path} on {args.runtime}, {args.n_seq} sequence(s), budget {budget / GIB:.2f} GiB")
    print("| context | weights GiB | KV GiB | scratch GiB | total GiB | fits |")
    print("|---|---|---|---|---|---|")
    for n in contexts:
        if not 0 < n <= n_max:
            raise G4CError(f"--context {n} is outside 1..{n_max} (context_length)")
        p = plan_at(n)
        print(f"| {n} | {p.weights / GIB:.3f} | {p.kv / GIB:.3f} | {p.scratch / GIB:.3f} | {p.total / GIB:.3f} | "
              f"{'yes' if p.total <= budget else 'no'} |")
    best = largest_context(plan_at, budget, n_max)
    print(f"largest context that fits: {best}" if best else "no context fits this budget")
    return 0


def cmd_check(args) -> int:
    from .model import Model

    model = Model(args.model)
    model.check_finite(progress=sys.stderr.isatty())
    print(f"{args.model}: valid {model.config.arch} GGUF, {len(model.tensor_names)} tensors, every weight finite")
    return 0


def cmd_runtimes(args) -> int:
    from .runtime import capabilities, discover, runs_by_default

    for name, rt in discover().items():
        av = rt.availability()
        named = "" if runs_by_default(rt) else f" (runs only when named: --runtime {name})"
        print(f"{name:12s} {'available' if av.ok else 'unavailable: ' + av.reason}{named}")
        caps = capabilities(rt)
        types = "every type" if caps.weight_types is None else ", ".join(sorted(caps.weight_types))
        print(f"{'':12s} precision {caps.precision}, trace {'yes' if caps.trace else 'no'}, weight types: {types}; "
              f"methods: {', '.join(sorted(caps.methods)) or 'none'}; ops: {', '.join(sorted(caps.ops)) or 'none'}; "
              f"{len(caps.departures)} departure(s)")
        for d in caps.departures:
            print(f"{'':14s}departs at {d.case}: {d}")
    return 0


def cmd_fixture(args) -> int:
    from g4c import fixtures
    from g4c.fixtures import generate

    if args.out:
        p, qt = generate.resolve(args.preset, args.type)
        out = Path(args.out)
        generate.write(out, p, qt, args.seed, progress=True)
    else:
        out = fixtures.ensure(args.preset, args.type, args.seed, progress=True)
    print(out)
    return 0


def _ids(text: str, n_vocab: int) -> list[int]:
    """--tokens as ids of the model's vocabulary. Sessions check ids too, but only here can
    the message name the argument and the item."""
    items = [t.strip() for t in text.split(",")]
    if items == [""]:
        raise InputError("--tokens is empty: give comma-separated token ids, e.g. 2,105")
    for i, t in enumerate(items, 1):
        if not t:
            raise InputError(f"--tokens {text!r}: item {i} is empty")
        # digits only: int() would also take "1_000", "+1" and non-ASCII digits; the length
        # bound spares int() a number of thousands of digits, which it refuses with a ValueError
        if not (t.isascii() and t.isdigit() and len(t) <= 20 and int(t) < n_vocab):
            raise InputError(f"--tokens: item {i}, {t!r}, is no token id of this model (0 to {n_vocab - 1})")
    return [int(t) for t in items]


def cmd_generate(args) -> int:
    import numpy as np

    from .model import Model
    from .reference import argmax_allowed
    from .runtime import get

    model = Model(args.model)
    tok = None
    if args.tokens is not None:
        prompt = _ids(args.tokens, model.n_vocab)
    else:
        from .tokenizer import Tokenizer

        tok = Tokenizer(model)
        if args.chat:
            rendered = tok.apply_chat_template([{"role": "user", "content": args.chat}])
            prompt = tok.encode(rendered, add_bos=False)  # the template writes BOS itself
        else:
            prompt = tok.encode(args.text)
    rt = get(args.runtime)
    av = rt.availability()
    if not av.ok:
        raise G4CError(f"runtime {args.runtime} unavailable: {av.reason}")
    sess = rt.load(model, min(args.max_context, model.config.n_ctx_train), 1)
    t0 = time.perf_counter()
    sess.prefill(prompt)
    t1 = time.perf_counter()
    out: list[int] = []
    stop = tok.eog_ids if tok else frozenset(model.config.eos_ids)
    for i in range(args.n):
        t = argmax_allowed(np.asarray(sess.logits, np.float64), model.config.suppress_tokens)
        out.append(t)
        if t in stop or i == args.n - 1:
            break
        sess.decode([t])
    t2 = time.perf_counter()
    print("prompt:", ",".join(map(str, prompt)))
    print("tokens:", ",".join(map(str, out)))
    if tok is not None:
        print("text:", tok.decode([t for t in out if t not in stop]))
    else:
        pieces = _vocab(model)
        if pieces:
            print("pieces:", "".join(pieces[t] if t < len(pieces) else f"<{t}>" for t in out).replace("▁", " "))
    ended = "end of generation token" if out and out[-1] in stop else f"{args.n} tokens"
    print(f"prefill {len(prompt)} tokens {t1 - t0:.2f} s; decode {len(out) - 1} tokens {t2 - t1:.2f} s; stopped at {ended}",
          file=sys.stderr)
    return 0


def _vocab(model) -> list[str] | None:
    mv = model.metadata.get("tokenizer.ggml.tokens")
    return mv.value if mv is not None else None


def cmd_golden(args) -> int:
    from g4c.fixtures import llamacpp

    strings = None
    if args.strings:
        try:
            strings = json.loads(Path(args.strings).read_text())
        except (OSError, ValueError) as e:
            raise G4CError(f"--strings {args.strings}: {e}") from None
    prompt = None
    if args.tokens is not None:
        from .model import Model

        prompt = _ids(args.tokens, Model(args.model).n_vocab)
    doc = llamacpp.build(Path(args.model), prompt, args.n, args.text, strings)
    llamacpp.write(doc, Path(args.out))
    print(f"{args.out}: {len(doc['greedy'])} greedy tokens from {doc['engine']} (KV {doc['kv_type']})")
    return 0


def cmd_report(args) -> int:
    try:
        from g4c.reports import build
    except ModuleNotFoundError as e:
        if e.name not in ("pandas", "matplotlib"):
            raise
        raise G4CError(f"the report needs {e.name}: pip install 'gemma4-conformance[report]'") from None

    info = build.build(args.inputs or build.default_inputs(), Path(args.out))
    print(build.summary(args.out, info))
    return 0


def cmd_run(args) -> int:
    from .run import run

    return run(args)


def cmd_serve(args) -> int:
    from .serve import serve

    return serve(args)


COMMANDS = {"run": cmd_run, "header": cmd_header, "generate": cmd_generate, "golden": cmd_golden, "fixture": cmd_fixture, "plan": cmd_plan, "check": cmd_check,
            "runtimes": cmd_runtimes, "report": cmd_report, "serve": cmd_serve}


if __name__ == "__main__":
    sys.exit(main())
