"""Comparisons that name their metric, print it, and say where outputs first diverged."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .reference import TRACE_OPS


def nmse(got: np.ndarray, ref: np.ndarray) -> float:
    ref = np.asarray(ref, np.float64)
    den = float(np.sum(ref * ref))
    return float(np.sum((np.asarray(got, np.float64) - ref) ** 2)) / den if den else float(np.sum(np.square(got)))


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


@dataclass
class LogitReport:
    n_positions: int
    max_abs: float
    nmse: float
    mean_kl: float  # KL(reference || runtime), nats, mean over positions
    top1_agreement: float
    worst_position: int
    worst_token: int

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return (
            f"max|dlogit| {self.max_abs:.3g} at position {self.worst_position} token {self.worst_token}, "
            f"NMSE {self.nmse:.3g}, mean KL {self.mean_kl:.3g}, top-1 {self.top1_agreement:.1%} "
            f"over {self.n_positions} positions"
        )


def compare_logits(got: np.ndarray, ref: np.ndarray, positions=None) -> LogitReport:
    got, ref = np.atleast_2d(np.asarray(got, np.float64)), np.atleast_2d(np.asarray(ref, np.float64))
    if got.shape != ref.shape:
        raise AssertionError(f"logits shape {got.shape} differs from the reference's {ref.shape}")
    if not np.isfinite(got).all():
        row, col = np.argwhere(~np.isfinite(got))[0]
        raise AssertionError(f"non-finite logit {got[row, col]} at row {row} token {col}")
    diff = np.abs(got - ref)
    row, col = np.unravel_index(int(np.argmax(diff)), diff.shape)
    lp_ref, lp_got = log_softmax(ref), log_softmax(got)
    kl = np.sum(np.exp(lp_ref) * (lp_ref - lp_got), axis=-1)
    positions = np.arange(len(got)) if positions is None else np.asarray(positions)
    return LogitReport(
        n_positions=len(got),
        max_abs=float(diff.max()),
        nmse=nmse(got, ref),
        mean_kl=float(kl.mean()),
        top1_agreement=float(np.mean(got.argmax(-1) == ref.argmax(-1))),
        worst_position=int(positions[row]),
        worst_token=int(col),
    )


def first_divergence(got_trace: dict, ref_trace: dict, hidden_nmse, positions) -> str | None:
    """The first (layer, op) whose output exceeds hidden_nmse (a number, or a limit per
    (layer, op)), with the position and size of its worst element; None when every traced
    output is within tolerance."""
    layers = sorted({k[0] for k in ref_trace})
    for layer in layers:
        for op in TRACE_OPS:
            if (layer, op) not in got_trace or (layer, op) not in ref_trace:
                continue
            g, r = np.asarray(got_trace[layer, op], np.float64), np.asarray(ref_trace[layer, op], np.float64)
            e = nmse(g, r)
            limit = hidden_nmse[layer, op] if isinstance(hidden_nmse, dict) else hidden_nmse
            if not e <= limit:
                d = np.abs(g - r)
                row, col = np.unravel_index(int(np.nanargmax(np.where(np.isfinite(d), d, np.inf))), d.shape)
                return (
                    f"first divergence at layer {layer} op {op}: NMSE {e:.3g} > {limit:.3g}; "
                    f"worst at position {int(np.asarray(positions)[row])} dim {col}: "
                    f"{g[row, col]:.6g} vs reference {r[row, col]:.6g}"
                )
    return None


def assert_logits_close(got, ref, tol, max_abs: float, positions=None, *, got_trace=None, ref_trace=None,
                        hidden_nmse: dict | None = None, what: str = "logits") -> LogitReport:
    """Assert NMSE and max |delta| within tolerance, and, where both traces are given, every
    traced layer output within hidden_nmse (a deep model can hide a layer's bug from its
    logits). A failure says where the outputs diverged first."""
    rep = compare_logits(got, ref, positions)
    ok = rep.nmse <= tol.logit_nmse and rep.max_abs <= max_abs
    # first_divergence compares the (layer, op) outputs present in both traces
    traced = bool(got_trace and ref_trace and got_trace.keys() & ref_trace.keys())
    where = None
    if traced:
        pos = np.arange(len(np.atleast_2d(got))) if positions is None else positions
        where = first_divergence(got_trace, ref_trace, hidden_nmse, pos)
    if not ok or where:
        within = "every traced layer within tolerance" if traced else "no per-layer trace on this path: divergence point unknown"
        raise AssertionError(
            f"{what}: {rep.line()}; limits NMSE {tol.logit_nmse:g}, max|dlogit| {max_abs:.3g} "
            f"({tol.precision}: {tol.why}); {where or within}"
        )
    return rep
