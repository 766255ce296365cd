"""The Phase 0 header dump: a markdown page saying what a GGUF holds and how it will be run."""

from __future__ import annotations

import numpy as np

from .config import PLE_LAYER_TENSORS, PLE_TENSORS
from .model import Model

ARRAY_SHOWN = 8  # long arrays (vocabularies, merges) are summarized


def _value(v) -> str:
    if isinstance(v, list):
        if len(v) > ARRAY_SHOWN:
            head = ", ".join(_scalar(x) for x in v[:ARRAY_SHOWN])
            return f"[{head}, ...] ({len(v)} entries)"
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    return _scalar(v)


def _scalar(v) -> str:
    if isinstance(v, str):
        s = v if len(v) <= 80 else v[:77] + "..."
        return repr(s).replace("|", "\\|")
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def render(model: Model) -> str:
    c = model.config
    out = [f"# GGUF header: {model.path.rsplit('/', 1)[-1]}", ""]
    out += [
        f"- GGUF version: {model.version}",
        f"- general.architecture: `{c.arch}` (forward: {c.family})",
        f"- tensors: {len(model.tensor_names)}, weight bytes: {model.weight_bytes:,}",
        f"- layers: {c.n_layer} ({sum(s.sliding for s in c.layers)} sliding, {len(c.full_layers)} full)",
        f"- full layers at: {', '.join(map(str, c.full_layers))}",
        f"- sliding pattern: {''.join('S' if s.sliding else 'F' for s in c.layers)}",
        "",
        "## Presence checks",
        "",
        "| check | result |",
        "|---|---|",
    ]
    ple = [n for n in PLE_TENSORS if model.has(n)] + [
        n for n in model.tensor_names if n.startswith("blk.") and n.split(".")[2] in PLE_LAYER_TENSORS
    ]
    n_scale = sum(s.has_output_scale for s in c.layers)
    rf = model.rope_freqs
    if rf is not None:
        n_one = int(np.sum(rf == 1.0))
        rf_desc = f"present, length {len(rf)} F32: {n_one} x 1.0 then {len(rf) - n_one} x {rf[-1]:g}"
    else:
        rf_desc = "absent (full layers rotate every pair)"
    no_v = [s.index for s in c.layers if not s.has_v]
    out += [
        f"| PLE (per-layer embeddings) | {'PRESENT: ' + ', '.join(sorted(ple)[:4]) if ple else 'absent (dense, no PLE)'} |",
        f"| layer_output_scale | {'present on all ' + str(n_scale) + ' layers' if n_scale == c.n_layer else (f'present on {n_scale} layers' if n_scale else 'absent')} |",
        f"| rope_freqs | {rf_desc} |",
        f"| output.weight | {'absent: output tied to token_embd' if c.tied_output else 'present (untied output head)'} |",
        f"| attn_v absent (k_eq_v, V = K projection) | layers {', '.join(map(str, no_v)) if no_v else 'none'} |",
        f"| final_logit_softcapping | {c.final_softcap if c.final_softcap is not None else 'absent'} |",
        "",
        "## Layers",
        "",
        "| layer | type | head dim | KV heads | RoPE base | n_rot | freq factors | V source | FFN | output scale |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in c.layers:
        out.append(
            f"| {s.index} | {s.kind} | {s.head_dim} | {s.n_head_kv} | {s.rope_base:g} | {s.n_rot} | "
            f"{'rope_freqs' if s.uses_rope_freqs else '1'} | {s.v_source} | {s.n_ff} | "
            f"{'yes' if s.has_output_scale else 'no'} |"
        )
    out += ["", "## Metadata", "", "| key | type | value |", "|---|---|---|"]
    for k, mv in model.metadata.items():
        out.append(f"| `{k}` | {mv.type_name} | {_value(mv.value)} |")
    out += ["", "## Tensors", "", "| name | type | shape | bytes |", "|---|---|---|---|"]
    for w in model.weights():
        out.append(f"| `{w.name}` | {w.qtype.name} | {list(w.shape)} | {w.nbytes:,} |")
    return "\n".join(out) + "\n"
