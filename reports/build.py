"""Build the HTML report: conformance matrix, throughput, roofline, RoPE drift, per-layer
divergence, and the llama-bench table, merged from result files of several machines.

    g4c report [RESULTS ...] [--out report.html]
    python -m g4c.reports.build [--data DIR_OR_FILE ...] [--out reports/out/index.html]

Every default is relative to the current directory, never to the installed package. With no
input named: ./reports/data (committed runs) and ./reports/out (this machine's fresh runs)
where either exists, as in the repository's root, else ./conformance-results.json (what
`g4c run` writes). Understood formats, told apart by their content:

- conformance results (`pytest conformance --results-json`, `g4c run`);
- pytest-benchmark JSON of `benchmarks/` (`--benchmark-json`), throughput in extra_info;
- llama-bench JSON (`llama-bench -o json`): llama.cpp's figures beside ours;
- the CUDA device script's JSON (reports/device/cuda_bench.py), from before the benchmarks;
- op-level perf runs (`python -m g4c.opcases --perf --json`): GB/s per op case per runtime;
- fault catches (tests/test_faults.py with G4C_FAULTS_JSON): which tests failed under each fault;
- `<llama-bench file stem>.provenance.json` beside a llama-bench file: our side of that run.

A file's machine is its own label (G4C_MACHINE when it was written) or, for files without
one, the last dash-separated part of its name (conformance-cuda-h100.json: h100). Each file's
provenance (g4c.provenance: commit, dirty tree, date, packages, machine, devices, drivers) is
shown beside its columns and rows, and a run made on other code than the checkout the report
is built from is marked. Plots are matplotlib SVG embedded as data URIs; tables are rendered
with jinja2.

A file of an understood format that lacks a key the report reads stops the build with one
line naming the file and the key (ReportError); files of no understood format are listed
as not used.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import markupsafe
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from g4c import provenance  # noqa: E402
from g4c.bench import fmt_params, fmt_size, llama_bench_table, params_label  # noqa: E402
from g4c.errors import G4CError  # noqa: E402

TEMPLATES = Path(__file__).resolve().parent / "templates"
REPOSITORY_INPUTS = (Path("reports/data"), Path("reports/out"))  # relative to the current directory
RUN_RESULTS = Path("conformance-results.json")  # what g4c run writes in the current directory
KEY_METRICS = ("max_abs_dlogit", "tf_max_abs_dlogit", "greedy_tokens_equal", "worst_ratio", "nmse")
MODEL_CHECKS = "(model checks)"  # the column of tests that take no runtime (their "runtime" is null)
OUTCOMES = ("passed", "failed", "departure", "not_supported", "skipped")
WORST_FIRST = ("failed", "departure", "not_supported", "skipped", "passed")
SIDECAR = ".provenance.json"  # <llama-bench stem>.provenance.json: llama-bench JSON has no room for ours


@dataclass
class Results:
    conformance: list[dict] = field(default_factory=list)  # {"machine", "file", "doc"}
    bench: list[dict] = field(default_factory=list)  # rows as g4c.bench.llama_bench_table takes, and more
    bandwidth: dict = field(default_factory=dict)  # machine -> {"bytes_per_s", "method", "device"}
    ops: list[dict] = field(default_factory=list)  # op-perf runs: {"column", "file", "doc"}
    faults: list[dict] = field(default_factory=list)  # fault-catch runs: {"machine", "file", "doc"}
    # file name -> {"kind", "machine", "provenance" (None: recorded before provenance), and
    # "created": the date the file itself records, for files without provenance}
    sources: dict = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)


class ReportError(G4CError):
    """What stops a report: a result file of a format the report reads lacks a key it needs
    or holds another type where an object or a list belongs, a named input does not exist,
    or the report cannot be written."""


@dataclass(frozen=True)
class _Reader:
    """Checks on one recognised result file, whose messages name the file, its format and
    the place in it (tests["node id"].outcome)."""

    path: Path
    kind: str

    def error(self, what: str) -> ReportError:
        return ReportError(f"{self.path} ({self.kind}): {what}")

    def obj(self, value, where: str, *keys: str) -> dict:
        """value, a JSON object holding every one of keys."""
        if not isinstance(value, dict):
            raise self.error(f"{where or 'the file'} is {_json_type(value)}, not an object")
        for k in keys:
            if k not in value:
                raise self.error(f"missing key {where + '.' if where else ''}{k}")
        return value

    def array(self, value, where: str) -> list:
        if not isinstance(value, list):
            raise self.error(f"{where} is {_json_type(value)}, not a list")
        return value

    def provenance(self, value, where: str = "provenance") -> dict | None:
        """A g4c.provenance record (None: recorded before provenance), with the parts the
        report reads as objects."""
        if value is None:
            return None
        self.obj(value, where)
        for part in ("machine", "packages", "runtimes"):
            if part in value:
                self.obj(value[part], f"{where}.{part}" if where else part)
        return value


def _json_type(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def _at(parent: str, key: str) -> str:
    """The place of an entry whose key is data (a node id, a runtime name): tests["a::b"]."""
    return f"{parent}[{json.dumps(key)}]"


def default_inputs() -> list[Path]:
    """What a report is built from when no input is named, relative to the current directory:
    the repository's reports/data and reports/out where either exists, else g4c run's
    conformance-results.json."""
    found = [p for p in REPOSITORY_INPUTS if p.is_dir()]
    if found:
        return found
    if RUN_RESULTS.is_file():
        return [RUN_RESULTS]
    raise ReportError(f"no result files named, and none of reports/data, reports/out, {RUN_RESULTS} in "
                          f"{Path.cwd()}: name result files or folders")


def _label_from_name(path: Path) -> str:
    parts = path.stem.split("-")
    return parts[-1] if len(parts) >= 3 else "local"


def load(inputs) -> Results:
    res = Results()
    files: list[Path] = []
    for p in map(Path, inputs):
        if not p.exists():
            raise ReportError(f"{p}: no such result file or folder")
        files += sorted(p.glob("*.json")) if p.is_dir() else [p]
    sidecars = {}
    for f in files:
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            res.ignored.append(f"{f.name} (unreadable: {e})")
            continue
        if f.name.endswith(SIDECAR):
            sidecars[f.name.removesuffix(SIDECAR) + ".json"] = (f.name, _Reader(f, "provenance").provenance(doc, ""))
        elif isinstance(doc, dict) and doc.get("kind") == "op-perf":
            _load_op_perf(res, f, doc)
        elif isinstance(doc, dict) and doc.get("kind") == "fault-catches":
            prov = _check_fault_catches(_Reader(f, "fault catches"), doc)
            machine = prov.get("machine", {}).get("label") or _label_from_name(f)
            res.faults.append({"machine": machine, "file": f.name, "doc": doc})
            _source(res, f, "fault catches", machine, doc.get("created"), prov)
        elif isinstance(doc, dict) and doc.get("suite") == "gemma4-conformance":
            _load_conformance(res, f, doc)
        elif isinstance(doc, dict) and "benchmarks" in doc and "machine_info" in doc:
            _load_pytest_benchmark(res, f, doc)
        elif isinstance(doc, list) and doc and isinstance(doc[0], dict) and "avg_ts" in doc[0]:
            _load_llama_bench(res, f, doc)
        elif isinstance(doc, dict) and "tg128_tokens_per_s" in doc:
            _load_cuda_script(res, f, doc)
        else:
            res.ignored.append(f"{f.name} (not a format the report reads)")
    for target, (name, doc) in sidecars.items():
        if res.sources.get(target, {}).get("kind") == "llama-bench":
            res.sources[target]["provenance"] = doc
        else:
            res.ignored.append(f"{name} (provenance of {target}, which is no llama-bench file among the inputs)")
    _fill_roofline(res)
    return res


def _source(res: Results, f: Path, kind: str, machine: str, created: str | None, prov: dict | None) -> None:
    res.sources[f.name] = {"kind": kind, "machine": machine, "provenance": prov, "created": created}


def _load_conformance(res: Results, f: Path, doc: dict) -> None:
    r = _Reader(f, "conformance results")
    tests = r.obj(r.obj(doc, "", "tests", "runtimes")["tests"], "tests")
    if any(isinstance(t, dict) and "module" not in t for t in tests.values()):
        res.ignored.append(f"{f.name} (conformance results without the per-test runtime and module fields)")
        return
    runtimes = r.obj(doc["runtimes"], "runtimes")
    for name, info in runtimes.items():
        if not r.obj(info, _at("runtimes", name), "available")["available"]:
            r.obj(info, _at("runtimes", name), "reason")  # shown under "not run"
    for nid, t in tests.items():
        where = _at("tests", nid)
        r.obj(t, where, "runtime", "module", "test", "case", "outcome")
        if t["runtime"] is not None and t["runtime"] not in runtimes:
            raise r.error(f"{where}.runtime is {t['runtime']!r}, which is not among runtimes")
        if t["outcome"] not in OUTCOMES:
            raise r.error(f"{where}.outcome is {t['outcome']!r}, not one of {', '.join(OUTCOMES)}")
        r.obj(t.get("metrics", {}), f"{where}.metrics")
    if doc.get("format") not in (None, 1, 2):  # from format 3 on, a file says whether its run finished
        r.obj(doc, "", "collected", "not_run", "interrupted")
    labels = ((r.provenance(doc.get("provenance")) or {}).get("machine", {}), r.obj(doc.get("machine", {}), "machine"))
    machine = next((m["label"] for m in labels if m.get("label")), None) or _label_from_name(f)
    note = incomplete(doc)
    res.conformance.append({"machine": machine, "file": f.name, "doc": doc, "incomplete": note,
                            "incomplete_why": f"{note} ({doc['interrupted']})" if doc.get("interrupted") else note})
    _source(res, f, "conformance", machine, doc.get("created"), doc.get("provenance"))


def incomplete(doc: dict) -> str | None:
    """How much of a conformance run has no result, e.g. "interrupted: 117 of 150 tests not
    run"; None for a finished run. Files before format 3 did not record it, and read as finished."""
    missing = doc.get("not_run") or 0
    if not (doc.get("interrupted") or missing):
        return None
    return f"{'interrupted' if doc.get('interrupted') else 'incomplete'}: {missing} of {doc['collected']} tests not run"


def _load_op_perf(res: Results, f: Path, doc: dict) -> None:
    r = _Reader(f, "op perf")
    r.obj(doc, "", "runtime", "cases")
    for i, c in enumerate(r.array(doc["cases"], "cases")):
        if r.obj(c, f"cases[{i}]", "id", "op", "bytes", "outcome")["outcome"] == "passed":
            r.obj(c, f"cases[{i}]", "gb_per_s", "best_s", "gflop_per_s", "nmse")
    prov = r.provenance(doc.get("provenance")) or {}
    machine = prov.get("machine", {}).get("label") or _label_from_name(f)
    settings = prov.get("runtimes", {}).get(doc["runtime"], {}).get("settings", {})
    path = f", {settings['path']} path" if settings.get("path") else ""
    res.ops.append({"column": f"{doc['runtime']}{path} ({machine})", "file": f.name, "doc": doc,
                    "device": settings.get("device", "")})
    _source(res, f, "op-perf", machine, doc.get("created"), prov)


def op_table(res: Results) -> dict:
    """Op cases as rows (in the list's order), runs as columns: GB/s of each case that
    computed its expected output, else its outcome."""
    columns = [r["column"] for r in res.ops]
    rows: dict[str, dict] = {}
    for j, run in enumerate(res.ops):
        for c in run["doc"]["cases"]:
            row = rows.setdefault(c["id"], {"id": c["id"], "op": c["op"], "bytes": c["bytes"], "cells": [None] * len(columns)})
            if c["outcome"] == "passed":
                shown, title = f"{c['gb_per_s']:.3g}", f"best {c['best_s'] * 1e6:.1f} us, {c['gflop_per_s']:.3g} GFLOP/s, NMSE {c['nmse']:.2g}"
            else:
                shown, title = c["outcome"].replace("_", " "), c.get("reason") or c.get("message") or ""
            row["cells"][j] = {"outcome": c["outcome"], "shown": shown, "title": title}
    return {"columns": columns, "devices": [r["device"] for r in res.ops], "rows": list(rows.values())}


def catch_matrix(res: Results) -> dict | None:
    """The newest fault-catch run as a matrix: one row per fault (its bug class, whether
    every named test failed), one column per conformance module, a cell counting the
    module's named tests that failed under the fault (hover: node ids and first messages)."""
    if not res.faults:
        return None
    run = max(res.faults, key=lambda r: r["doc"].get("created") or "")
    faults = run["doc"]["faults"]
    module = lambda nid: nid.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")  # noqa: E731
    modules = sorted({module(nid) for f in faults for nid in f["caught_by"]})
    rows = []
    for f in faults:
        cells = []
        for m in modules:
            mine = {nid: o for nid, o in f["outcomes"].items() if module(nid) == m}
            if not mine:
                cells.append(None)
                continue
            failed = sum(o["outcome"] == "failed" for o in mine.values())
            title = "\n".join(f"{nid.split('::', 1)[1]}: {o['outcome']}"
                               + (f" ({(o.get('message') or '')[:160]})" if o.get("message") else "") for nid, o in mine.items())
            cells.append({"outcome": "passed" if failed == len(mine) else "failed", "shown": f"{failed}/{len(mine)}",
                          "title": title})
        rows.append({"name": f["name"], "what": f["what"], "bug_class": f.get("bug_class", ""), "caught": f["caught"],
                     "cells": cells})
    return {"machine": run["machine"], "file": run["file"], "modules": modules, "rows": rows,
            "caught": sum(r["caught"] for r in rows), "total": len(rows)}


def _check_fault_catches(r: _Reader, doc: dict) -> dict:
    """The file's provenance ({} where it has none), once every key catch_matrix reads is there."""
    for i, fault in enumerate(r.array(r.obj(doc, "", "faults")["faults"], "faults")):
        where = f"faults[{i}]"
        r.obj(fault, where, "name", "what", "caught", "caught_by", "outcomes")
        r.array(fault["caught_by"], f"{where}.caught_by")
        for nid, o in r.obj(fault["outcomes"], f"{where}.outcomes").items():
            r.obj(o, _at(f"{where}.outcomes", nid), "outcome")
    return r.provenance(doc.get("provenance")) or {}


BENCH_KEYS = ("runtime", "backend", "machine", "model_file", "size_bytes", "test", "tok_s", "bandwidth_bytes_per_s",
              "bandwidth_method")  # extra_info that the throughput table and the plots read


def _load_pytest_benchmark(res: Results, f: Path, doc: dict) -> None:
    r = _Reader(f, "pytest-benchmark")
    n = 0
    for i, b in enumerate(r.array(doc["benchmarks"], "benchmarks")):
        x = r.obj(r.obj(b, f"benchmarks[{i}]").get("extra_info", {}), f"benchmarks[{i}].extra_info")
        if "tok_s" not in x:  # no decode or prefill (benchmarks/test_vulkan_loads.py: bytes read per second)
            continue
        r.obj(x, f"benchmarks[{i}].extra_info", *BENCH_KEYS)
        res.bench.append({**x, "source": f.name})
        res.bandwidth.setdefault(x["machine"], {"bytes_per_s": x["bandwidth_bytes_per_s"],
                                                "method": x["bandwidth_method"], "device": x.get("device", "")})
        n += 1
    if n:
        _source(res, f, "pytest-benchmark", res.bench[-1]["machine"], doc.get("datetime"), r.provenance(doc.get("provenance")))
    else:
        res.ignored.append(f"{f.name} (pytest-benchmark JSON without this suite's extra_info)")


def _load_llama_bench(res: Results, f: Path, doc: list) -> None:
    check = _Reader(f, "llama-bench")
    for i, r in enumerate(doc):
        if not check.obj(r, f"[{i}]", "model_size", "model_n_params", "avg_ts").get("n_gen"):
            check.obj(r, f"[{i}]", "n_prompt")  # a prompt-processing row is named after it
    machine = _label_from_name(f)
    for r in doc:
        test = f"pp{r['n_prompt']}" if r.get("n_gen", 0) == 0 else f"tg{r['n_gen']}"
        if r.get("n_depth"):
            test += f" @ d{r['n_depth']}"
        steps_bytes = r["model_size"] if r.get("n_gen", 0) else float("nan")
        # llama-bench prints '?B' for a size class it does not know (the 12B-shaped fixture)
        model = r.get("model_type", "?").replace("?B", params_label(r["model_n_params"]))
        res.bench.append({
            "runtime": "llama.cpp", "backend": f"{r.get('backends', '?')} (llama.cpp)", "machine": machine,
            "device": r.get("gpu_info") or r.get("cpu_info", ""), "model": model,
            "model_file": os.path.basename(r.get("model_filename", "?")), "size_bytes": r["model_size"],
            "params": r["model_n_params"], "test": test, "tok_s": r["avg_ts"], "tok_s_std": r.get("stddev_ts"),
            # llama-bench reports no traffic: a decode step reads at least the weights once
            "bytes_per_token": steps_bytes, "source": f.name,
        })
    _source(res, f, "llama-bench", machine, doc[0].get("test_time"), None)  # provenance: its sidecar


def _load_cuda_script(res: Results, f: Path, doc: dict) -> None:
    r = _Reader(f, "CUDA device script")
    r.obj(doc, "", "weight_bytes", "copy_bandwidth_read_plus_write_GBps", "device", "model")
    r.provenance(doc.get("provenance"))
    machine = _label_from_name(f)
    size = doc["weight_bytes"]
    res.bandwidth.setdefault(machine, {"bytes_per_s": doc["copy_bandwidth_read_plus_write_GBps"] * 1e9,
                                       "method": "cupy copy of 1 GiB, read + write", "device": doc["device"]})
    tests = {"pp512": ("pp512_tokens_per_s", float("nan")), "tg128": ("tg128_tokens_per_s", size),
             "tg32 @ d8192": ("tg32_at_depth_8192_tokens_per_s", size)}
    tests.update({f"tg32 x{n}": (f"batched_N{n}_tokens_per_s", size / n) for n in (1, 4, 16)})
    for test, (key, per_token) in tests.items():
        if key in doc:
            res.bench.append({"runtime": "cuda", "backend": "CUDA", "machine": machine, "device": doc["device"],
                              "model": None, "model_file": doc["model"], "size_bytes": size, "params": None,
                              "test": test, "tok_s": doc[key], "tok_s_std": None, "bytes_per_token": per_token,
                              "source": f.name})
    _source(res, f, "CUDA device script", machine, None, doc.get("provenance"))


def _fill_roofline(res: Results) -> None:
    """Rows from files without their own bandwidth take their machine's measured one, and
    rows without a model label or parameter count take them from a row of the same file."""
    by_file = {}
    for r in res.bench:
        if r.get("model") and r.get("params") and "?" not in r["model"]:
            by_file.setdefault(r["model_file"], (r["model"], r["params"]))
    for r in res.bench:
        if r.get("params") is None or r.get("model") is None or "?" in str(r.get("model")):
            model, params = by_file.get(r["model_file"], (r.get("model") or r["model_file"], r.get("params")))
            r["model"], r["params"] = model, params if params is not None else float("nan")
        bw = res.bandwidth.get(r["machine"])
        if "roofline_fraction" not in r and bw and r.get("bytes_per_token") is not None:
            r["bandwidth_bytes_per_s"] = bw["bytes_per_s"]
            r["roofline_fraction"] = r["bytes_per_token"] * r["tok_s"] / bw["bytes_per_s"]


# -- conformance -------------------------------------------------------------------------------

def conformance_frame(res: Results) -> pd.DataFrame:
    """One row per test and column (runtime @ machine), from each test's own runtime and
    module fields; a test that takes no runtime goes to the machine's (model checks) column."""
    rows = []
    for c in sorted(res.conformance, key=lambda c: c["doc"].get("created", "")):
        doc = c["doc"]
        for r in doc["tests"].values():
            rt = r["runtime"]
            if rt is not None and not doc["runtimes"][rt]["available"]:
                continue  # listed under "not run", with the reason
            rows.append({"column": f"{rt or MODEL_CHECKS} @ {c['machine']}", "runtime": rt, "machine": c["machine"],
                         "module": r["module"], "test": r["test"], "case": r["case"], "outcome": r["outcome"],
                         "metrics": r.get("metrics", {}), "detail": r.get("reason") or r.get("message") or "",
                         "file": c["file"]})
    df = pd.DataFrame(rows, columns=["column", "runtime", "machine", "module", "test", "case", "outcome", "metrics",
                                     "detail", "file"])
    # files of one machine repeat its model checks, and reruns repeat a runtime: each case once, the newest
    return df.drop_duplicates(subset=["column", "module", "case"], keep="last").reset_index(drop=True)


def _cell(row) -> dict:
    scalars = {k: v for k, v in row["metrics"].items() if isinstance(v, (int, float))}
    metric = next((k for k in KEY_METRICS if k in scalars), None)
    title = "; ".join(f"{k} = {_num(v)}" for k, v in scalars.items())
    if row["detail"]:
        title = (title + "; " if title else "") + row["detail"][:500]
    return {"outcome": row["outcome"], "metric": metric, "value": _num(scalars[metric]) if metric else None,
            "title": title}


def _num(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _breakable(name: str) -> markupsafe.Markup:
    """A test, case or metric name that may wrap in the matrix's narrow columns after its
    underscores and between its parameters, never inside a parameter value (qtype=Q4_0)."""
    head, bracket, params = name.partition("[")
    out = markupsafe.Markup("_<wbr>").join(head.split("_"))
    if bracket:
        out += markupsafe.Markup("<wbr>[") + markupsafe.Markup(",<wbr>").join(params.split(","))
    return out


def matrix(df: pd.DataFrame) -> dict:
    """The matrix grouped by test module: per module a summary per column (its counts, coloured
    by the worst outcome) and the case rows; a module with a failure starts unfolded."""
    if df.empty:
        return {"columns": [], "model_checks": [], "groups": []}
    columns = _columns(df)
    groups = []
    for module, d in df.groupby("module"):
        cells = {(r["case"], r["column"]): _cell(r) for _, r in d.iterrows()}
        cases = sorted(d["case"].unique())
        groups.append({"module": module, "cases": len(cases), "open": bool((d["outcome"] == "failed").any()),
                       "summary": [_summary(d.loc[d["column"] == c, "outcome"]) for c in columns],
                       "rows": [{"case": k, "cells": [cells.get((k, c)) for c in columns]} for k in cases]})
    return {"columns": columns, "model_checks": [c for c in columns if c.startswith(MODEL_CHECKS)], "groups": groups}


def _columns(df: pd.DataFrame) -> list[str]:
    """Runtime columns first; the (model checks) columns, with a few tests each, after them."""
    return sorted(df["column"].unique(), key=lambda c: (c.startswith(MODEL_CHECKS), c))


def _summary(outcomes: pd.Series) -> dict | None:
    if outcomes.empty:
        return None
    n = outcomes.value_counts()
    return {"outcome": next(o for o in WORST_FIRST if o in n),
            "shown": " · ".join(f"{n[o]} {o.replace('_', ' ')}" for o in OUTCOMES if o in n)}


def not_run(res: Results) -> list[str]:
    """Runtimes of each file without a column of its results: their device was absent, or
    the run stopped before any of their tests."""
    out = []
    for c in res.conformance:
        ran = {t["runtime"] for t in c["doc"]["tests"].values()}
        for rt, info in c["doc"]["runtimes"].items():
            if not info["available"]:
                out.append(f"{rt} @ {c['machine']}: {info['reason']} ({c['file']})")
            elif c["incomplete"] and rt not in ran:
                out.append(f"{rt} @ {c['machine']}: no test reached, run {c['incomplete_why']} ({c['file']})")
    return out


def counts(df: pd.DataFrame) -> list[dict]:
    if df.empty:
        return []
    t = df.groupby(["column", "outcome"]).size().unstack(fill_value=0)
    return [{"column": col, **{k: int(t.loc[col].get(k, 0)) for k in OUTCOMES}} for col in _columns(df)]


# -- provenance ------------------------------------------------------------------------------------

def code_note(name: str, source: dict, code: dict) -> dict:
    """Result file `name`'s code beside the report's own (`code`: g4c.provenance.commit() of the
    checkout the report is built from): short commit, dirty flag, date, and `other`, why it
    may be other code than the report's (None: the report's commit, on a clean tree)."""
    prov = source["provenance"]
    sha, dirty = (prov.get("commit"), prov.get("dirty")) if prov else (None, None)
    if prov is None:
        other = "commit unknown (recorded before provenance)"
    elif sha is None:
        other = "commit unknown (run outside a git checkout, without G4C_COMMIT)"
    elif sha != code["commit"]:
        other = f"commit {sha[:7]}, not the report's {_short(code['commit'])}"
    elif dirty is not False:
        other = "uncommitted changes in its tree" if dirty else "not known whether its tree had uncommitted changes"
    else:
        other = None
    created = (prov or {}).get("created") or source["created"] or ""
    return {"file": name, "commit": _short(sha), "dirty": bool(dirty), "created": created,
            "date": created[:10] or "date unknown", "other": other,
            "why": f"other code: {other}" if other else "the code this report is built from"}


def _short(sha: str | None) -> str:
    return sha[:7] if sha else "unknown"


def column_runs(res: Results, df: pd.DataFrame, code: dict) -> dict[str, list[dict]]:
    """Per matrix column, the result files behind it, newest first: each one's code note and
    the runtime's device, driver and settings as that file recorded them."""
    files = {c["file"]: c for c in res.conformance}
    out: dict[str, list[dict]] = {}
    for column, rt, name in df[["column", "runtime", "file"]].drop_duplicates().itertuples(index=False):
        settings = files[name]["doc"]["runtimes"].get(rt, {}).get("settings", {})  # (model checks): no runtime
        out.setdefault(column, []).append({
            **code_note(name, res.sources[name], code), "device": settings.get("device"),
            "driver": settings.get("driver"), "settings": "; ".join(f"{k} = {v}" for k, v in settings.items()),
            "incomplete": files[name]["incomplete"], "incomplete_why": files[name]["incomplete_why"]})
    for runs in out.values():
        runs.sort(key=lambda r: r["created"], reverse=True)
    return out


def source_rows(res: Results, code: dict) -> list[dict]:
    """Every result file used, with its code note, machine and package versions."""
    rows = []
    for name, s in sorted(res.sources.items()):
        prov = s["provenance"] or {}
        m = prov.get("machine", {})
        rows.append({**s, **code_note(name, s, code),
                     "machine_detail": ", ".join(str(v) for k, v in m.items() if k not in ("label", "node") and v),
                     "packages": ", ".join(f"{k} {v}" for k, v in prov.get("packages", {}).items())})
    return rows


# -- plots ---------------------------------------------------------------------------------------

def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue().encode()).decode()


def _series(row) -> str:
    return f"{row['runtime']} @ {row['machine']}"


def throughput_plot(bench: pd.DataFrame) -> str | None:
    if bench.empty:
        return None
    models = list(dict.fromkeys(bench["model_file"]))
    fig, axes = plt.subplots(len(models), 1, figsize=(10, 3.6 * len(models)), squeeze=False)
    for ax, mf in zip(axes[:, 0], models):
        d = bench[bench["model_file"] == mf].copy()
        d["series"] = d.apply(_series, axis=1)
        tests = list(dict.fromkeys(d["test"]))
        series = list(dict.fromkeys(d["series"]))
        width = 0.8 / len(series)
        for i, s in enumerate(series):
            ds = d[d["series"] == s].set_index("test")
            ys = [ds["tok_s"].get(t, np.nan) for t in tests]
            err = [ds["tok_s_std"].get(t, np.nan) if "tok_s_std" in ds else np.nan for t in tests]
            err = [e if e is not None and np.isfinite(e) else 0 for e in err]
            ax.bar(np.arange(len(tests)) + i * width - 0.4 + width / 2, ys, width, yerr=err, label=s, capsize=2)
        ax.set_xticks(np.arange(len(tests)), tests, rotation=20, ha="right")
        ax.set_yscale("log")
        ax.set_ylabel("tokens/s")
        ax.set_title(f"{d['model'].iloc[0]} ({mf})", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _svg(fig)


def roofline_plot(bench: pd.DataFrame, bandwidth: dict) -> str | None:
    d = bench[bench["test"].str.startswith("tg") & bench["bytes_per_token"].notna()] if not bench.empty else bench
    if d.empty or not bandwidth:
        return None
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for machine, bw in bandwidth.items():
        dm = d[d["machine"] == machine]["bytes_per_token"]
        if dm.empty:
            continue
        x = np.logspace(np.log10(dm.min() / 3), np.log10(dm.max() * 3), 50)
        ax.plot(x, bw["bytes_per_s"] / x, "--", lw=1,
                label=f"{machine} limit: {bw['bytes_per_s'] / 1e9:.0f} GB/s ({bw.get('device', '')})")
    for s, ds in d.assign(series=d.apply(_series, axis=1)).groupby("series", sort=False):
        ax.scatter(ds["bytes_per_token"], ds["tok_s"], label=s, s=28)
        for _, r in ds.iterrows():
            frac = r.get("roofline_fraction")
            note = f"{r['test']} {100 * frac:.0f}%" if frac is not None and np.isfinite(frac) else r["test"]
            ax.annotate(note, (r["bytes_per_token"], r["tok_s"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    return _finish(fig, ax, "bytes read per token (weights + KV at that depth)", "tokens/s",
                   "Decode roofline: tokens/s against bytes read per token; dashed = measured bandwidth / bytes", 7)


def _metric_rows(df: pd.DataFrame, module: str, test: str, key: str):
    if df.empty:
        return
    for _, r in df[(df["module"] == module) & (df["test"] == test)].iterrows():
        if key in r["metrics"]:
            yield r, r["metrics"][key]


def drift_plot(df: pd.DataFrame) -> str | None:
    rows = list(_metric_rows(df, "test_rope", "test_rope_drift_curve", "drift_curve"))
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for r, curve in rows:
        c = pd.DataFrame(curve)
        ax.plot(c["position"], c["max_abs_dlogit"], "o-", label=f"{r['column']}: max |Δlogit|")
    c = pd.DataFrame(rows[0][1])
    ax.plot(c["position"], c["f32_angle_allowance"], ":", color="gray", label="f32-angle drift of the references")
    ax.plot(c["position"], c["limit"], "--", color="red", label="limit (f32 bound + drift allowance)")
    return _finish(fig, ax, "position of the last prompt token", "max |Δlogit| vs float64 reference",
                   "RoPE drift: logit error against position, tiny fixture, 0 to 262143", 8)


def _finish(fig, ax, xlabel: str, ylabel: str, title: str, legend_size: int) -> str:
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=legend_size)
    ax.grid(alpha=0.3, which="both")
    return _svg(fig)


def heatmap_plot(df: pd.DataFrame) -> str | None:
    rows = list(_metric_rows(df, "test_dense", "test_layer_divergence", "layer_nmse_over_limit"))
    if not rows:
        return None
    labels, data = [], []
    for r, table in rows:
        for op, vals in table.items():
            labels.append(f"{r['column']} {op}")
            data.append(np.log10(np.maximum(np.asarray(vals, float), 1e-12)))
    data = np.array(data)
    fig, ax = plt.subplots(figsize=(11, 0.35 * len(labels) + 1.6))
    im = ax.imshow(data, aspect="auto", cmap="viridis", vmin=min(-6.0, data.min()), vmax=max(0.0, data.max()))
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("layer (schema fixture, 48 layers, 12B head geometry)")
    ax.set_title("Per-layer divergence: log10(NMSE / depth-dependent f32 limit); 0 = at the limit")
    fig.colorbar(im, ax=ax, label="log10(NMSE / limit)")
    return _svg(fig)


# -- page ------------------------------------------------------------------------------------------

def build(inputs, out: Path, code: dict | None = None) -> dict:
    """Write the report of the result files in `inputs` to `out`; `code` is the commit the
    runs are compared with ({"commit", "dirty"}, default: this checkout's)."""
    code = code or provenance.commit()
    res = load(inputs)
    df = conformance_frame(res)
    bench = pd.DataFrame(res.bench)
    if not bench.empty:
        for col in ("tok_s_std", "roofline_fraction", "bandwidth_bytes_per_s"):
            if col not in bench:
                bench[col] = np.nan
        bench["bytes_per_token"] = pd.to_numeric(bench["bytes_per_token"], errors="coerce")
    plots = [
        ("throughput", "Throughput", "tokens/s per test, one panel per model file; error bars: standard deviation over rounds.",
         throughput_plot(bench), "no benchmark results"),
        ("roofline", "Roofline", "each decode run against its machine's measured memory bandwidth.",
         roofline_plot(bench, res.bandwidth), "no decode benchmark with a measured bandwidth"),
        ("drift", "RoPE drift", "max |Δlogit| of an 8-token prompt ending at each position, against the float64 reference.",
         drift_plot(df), "no test_rope_drift_curve results"),
        ("heatmap", "Per-layer divergence", "traced layer outputs (attention, FFN, layer) against the reference.",
         heatmap_plot(df), "no test_layer_divergence results"),
    ]
    bench_rows = []
    if not bench.empty:
        for _, r in bench.iterrows():
            bench_rows.append({**r.to_dict(), "size": fmt_size(r["size_bytes"]),
                               "params_s": fmt_params(r["params"]) if r["params"] == r["params"] else "?",
                               "roofline_pct": _pct(r.get("roofline_fraction")),
                               "code": code_note(r["source"], res.sources[r["source"]], code)})
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    env.filters["breakable"] = _breakable
    html = env.get_template("index.html.j2").render(
        created=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), code=code, short=_short(code["commit"]),
        counts=counts(df), matrix=matrix(df), runs=column_runs(res, df, code), not_run=not_run(res), plots=plots,
        bench=bench_rows, bandwidth=res.bandwidth, markdown=llama_bench_table(bench_rows) if bench_rows else "",
        sources=source_rows(res, code), ignored=res.ignored, ops=op_table(res), catches=catch_matrix(res))
    tmp = out.with_suffix(".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(html)
        os.replace(tmp, out)
    except OSError as e:
        raise ReportError(f"cannot write the report to {out}: {e.strerror or e}") from None
    return {"plots": [p[0] for p in plots if p[3]], "missing": [p[0] for p in plots if not p[3]],
            "conformance_files": len(res.conformance), "bench_rows": len(bench_rows), "ignored": res.ignored,
            "incomplete": [f"{c['file']}: {c['incomplete_why']}" for c in res.conformance if c["incomplete"]]}


def summary(out, info: dict) -> str:
    """build()'s outcome in one line, for the command line."""
    return (f"wrote {out}: {info['conformance_files']} conformance files, {info['bench_rows']} benchmark rows, "
            f"plots {', '.join(info['plots']) or 'none'}"
            + (f"; no data for {', '.join(info['missing'])}" if info["missing"] else "")
            + "".join(f"; {run}" for run in info["incomplete"])
            + (f"; not used: {'; '.join(info['ignored'])}" if info["ignored"] else ""))


def _pct(v) -> str:
    return f"{100 * v:.2f}%" if v is not None and isinstance(v, float) and math.isfinite(v) else "n/a"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m g4c.reports.build", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", action="append", default=[],
                    help="result file or folder (repeatable; default: ./reports/data and ./reports/out where they "
                         "exist, else ./conformance-results.json)")
    ap.add_argument("--out", default="reports/out/index.html", help="relative to the current directory "
                    "(default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        info = build(args.data or default_inputs(), Path(args.out))
    except G4CError as e:
        print(f"{ap.prog}: error: {e}", file=sys.stderr)
        return 2
    print(summary(args.out, info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
