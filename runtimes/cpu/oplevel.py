"""The CPU runtime's ops at op level (g4c.opcases), through the same ops.py functions and
numpy products its forward runs, so a fault injected into ops.py shows here too."""

from __future__ import annotations

import numpy as np

from g4c import quants
from g4c.opcases import OpCase, timed

from . import ops

F32 = np.float32


def run_op(case: OpCase, inputs: dict, repeat: int = 0) -> tuple[np.ndarray, list[float]]:
    out = {}

    def run() -> None:
        out["y"] = compute(case, inputs)

    return timed(run, lambda: out["y"], repeat)


def compute(case: OpCase, inputs: dict) -> np.ndarray:
    op = case.op
    if op in ("dequantize", "matvec", "matmul"):
        w = ops.dequantize(inputs["raw"], quants.TYPE_NAMES[case.qtype], case.cols)
        return w if op == "dequantize" else ops.matmul(inputs["x"], w)
    if op == "rms_norm":
        return ops.rms_norm(inputs["x"], inputs.get("w"), case.eps)
    if op == "rope":
        spec = case.layer_spec()
        return ops.rope(inputs["x"], ops.rope_angles(spec, inputs["pos"], inputs.get("freq_factors")), spec.n_rot)
    if op == "attention":
        return attention(case, inputs)
    if op == "softcap":
        return ops.softcap(inputs["x"], case.cap)
    return ops.gelu_tanh(inputs["gate"]) * inputs["up"]


def attention(case: OpCase, inputs: dict) -> np.ndarray:
    """The session's attention (ops.attend) over keys it already holds."""
    return ops.attend(inputs["q"], inputs["k"], inputs["v"], inputs["qpos"], inputs["kpos"], case.layer_spec())
