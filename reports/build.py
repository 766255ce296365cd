"""Build the HTML report: conformance matrix, throughput, roofline, RoPE drift, per-layer
divergence, and the llama-bench table, merged from result files of several machines.

    python -m reports.build [--data DIR_OR_FILE ...] [--out reports/out/index.html]

Default inputs: reports/data (committed runs) and reports/out (this machine's fresh runs).
Understood formats, told apart by their content:

- conformance results (`pytest conformance --results-json`, `g4c run`);
- pytest-benchmark JSON of `benchmarks/` (`--benchmark-json`), throughput in extra_info;
- llama-bench JSON (`llama-bench -o json`): llama.cpp's figures beside ours;
- the CUDA device script's JSON (reports/device/cuda_bench.py), from before the benchmarks.

A file's machine is its own label (G4C_MACHINE when it was written) or, for files without
one, the last dash-separated part of its name (conformance-cuda-h100.json: h100). Plots are
matplotlib SVG embedded as data URIs; tables are rendered with jinja2.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from g4c.bench import fmt_params, fmt_size, llama_bench_table, params_label  # noqa: E402
from g4c.results import NO_RUNTIME, split_nodeid  # noqa: E402

ROOT = Path(__file__).resolve().parent
DEFAULT_INPUTS = [ROOT / "data", ROOT / "out"]
KEY_METRICS = ("max_abs_dlogit", "tf_max_abs_dlogit", "greedy_tokens_equal", "worst_ratio", "nmse")


@dataclass
class Results:
    conformance: list[dict] = field(default_factory=list)  # {"machine", "file", "doc"}
    bench: list[dict] = field(default_factory=list)  # rows as g4c.bench.llama_bench_table takes, and more
    bandwidth: dict = field(default_factory=dict)  # machine -> {"bytes_per_s", "method", "device"}
    ignored: list[str] = field(default_factory=list)


def _label_from_name(path: Path) -> str:
    parts = path.stem.split("-")
    return parts[-1] if len(parts) >= 3 else "local"


def load(inputs) -> Results:
    res = Results()
    files: list[Path] = []
    for p in map(Path, inputs):
        files += sorted(p.glob("*.json")) if p.is_dir() else [p] if p.exists() else []
    for f in files:
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            res.ignored.append(f"{f.name} (unreadable: {e})")
            continue
        if isinstance(doc, dict) and doc.get("suite") == "gemma4-conformance":
            machine = doc.get("machine", {}).get("label") or _label_from_name(f)
            res.conformance.append({"machine": machine, "file": f.name, "doc": doc})
        elif isinstance(doc, dict) and "benchmarks" in doc and "machine_info" in doc:
            _load_pytest_benchmark(res, f, doc)
        elif isinstance(doc, list) and doc and isinstance(doc[0], dict) and "avg_ts" in doc[0]:
            _load_llama_bench(res, f, doc)
        elif isinstance(doc, dict) and "tg128_tokens_per_s" in doc:
            _load_cuda_script(res, f, doc)
        else:
            res.ignored.append(f"{f.name} (not a format the report reads)")
    _fill_roofline(res)
    return res


def _load_pytest_benchmark(res: Results, f: Path, doc: dict) -> None:
    n = 0
    for b in doc["benchmarks"]:
        x = b.get("extra_info", {})
        if "tok_s" not in x:
            continue
        res.bench.append({**x, "source": f.name})
        res.bandwidth.setdefault(x["machine"], {"bytes_per_s": x["bandwidth_bytes_per_s"],
                                                "method": x["bandwidth_method"], "device": x.get("device", "")})
        n += 1
    if not n:
        res.ignored.append(f"{f.name} (pytest-benchmark JSON without this suite's extra_info)")


def _load_llama_bench(res: Results, f: Path, doc: list) -> None:
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


def _load_cuda_script(res: Results, f: Path, doc: dict) -> None:
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
    rows = []
    for c in res.conformance:
        doc = c["doc"]
        for nodeid, r in doc["tests"].items():
            rt, test = split_nodeid(nodeid, doc["runtimes"])
            if rt != NO_RUNTIME and not doc["runtimes"][rt]["available"]:
                continue  # listed under "not run", with the reason
            rows.append({"column": f"{rt} @ {c['machine']}", "runtime": rt, "machine": c["machine"], "test": test,
                         "outcome": r["outcome"], "metrics": r.get("metrics", {}),
                         "detail": r.get("reason") or r.get("message") or ""})
    df = pd.DataFrame(rows, columns=["column", "runtime", "machine", "test", "outcome", "metrics", "detail"])
    # two files of one machine repeat its runtime-free model checks: count each test once, the newest
    return df.drop_duplicates(subset=["column", "test"], keep="last").reset_index(drop=True)


def _cell(row) -> dict:
    scalars = {k: v for k, v in row["metrics"].items() if isinstance(v, (int, float))}
    shown = next((f"{k} {_num(scalars[k])}" for k in KEY_METRICS if k in scalars), "")
    title = "; ".join(f"{k} = {_num(v)}" for k, v in scalars.items())
    if row["detail"]:
        title = (title + "; " if title else "") + row["detail"][:500]
    return {"outcome": row["outcome"], "shown": shown, "title": title}


def _num(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def matrix(df: pd.DataFrame) -> dict:
    if df.empty:
        return {"columns": [], "rows": []}
    columns = sorted(df["column"].unique())
    cells = {(r["test"], r["column"]): _cell(r) for _, r in df.iterrows()}
    tests = sorted(df["test"].unique())
    return {"columns": columns, "rows": [{"test": t, "cells": [cells.get((t, c)) for c in columns]} for t in tests]}


def not_run(res: Results) -> list[str]:
    out = []
    for c in res.conformance:
        for rt, info in c["doc"]["runtimes"].items():
            if not info["available"]:
                out.append(f"{rt} @ {c['machine']}: {info['reason']} ({c['file']})")
    return out


def counts(df: pd.DataFrame) -> list[dict]:
    if df.empty:
        return []
    t = df.groupby(["column", "outcome"]).size().unstack(fill_value=0)
    return [{"column": col, **{k: int(t.loc[col].get(k, 0)) for k in ("passed", "failed", "departure", "not_supported", "skipped")}}
            for col in t.index]


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


def _metric_rows(df: pd.DataFrame, test: str, key: str):
    if df.empty:
        return
    for _, r in df[df["test"] == test].iterrows():
        if key in r["metrics"]:
            yield r, r["metrics"][key]


def drift_plot(df: pd.DataFrame) -> str | None:
    rows = list(_metric_rows(df, "test_rope.py::test_rope_drift_curve", "drift_curve"))
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
    rows = list(_metric_rows(df, "test_dense.py::test_layer_divergence", "layer_nmse_over_limit"))
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

def build(inputs, out: Path) -> dict:
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
                               "roofline_pct": _pct(r.get("roofline_fraction"))})
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROOT / "templates"), autoescape=True)
    html = env.get_template("index.html.j2").render(
        created=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), counts=counts(df), matrix=matrix(df),
        not_run=not_run(res), plots=plots, bench=bench_rows, bandwidth=res.bandwidth,
        markdown=llama_bench_table([r for r in bench_rows]) if bench_rows else "",
        sources=sorted({c["file"] for c in res.conformance} | {r["source"] for r in res.bench}), ignored=res.ignored)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(html)
    os.replace(tmp, out)
    return {"plots": [p[0] for p in plots if p[3]], "missing": [p[0] for p in plots if not p[3]],
            "conformance_files": len(res.conformance), "bench_rows": len(bench_rows)}


def _pct(v) -> str:
    return f"{100 * v:.2f}%" if v is not None and isinstance(v, float) and math.isfinite(v) else "n/a"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", action="append", default=[], help="result file or folder (repeatable)")
    ap.add_argument("--out", default=str(ROOT / "out" / "index.html"))
    args = ap.parse_args(argv)
    info = build(args.data or DEFAULT_INPUTS, Path(args.out))
    print(f"wrote {args.out}: {info['conformance_files']} conformance files, {info['bench_rows']} benchmark rows, "
          f"plots {', '.join(info['plots']) or 'none'}" + (f"; no data for {', '.join(info['missing'])}" if info["missing"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
