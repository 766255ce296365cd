"""Deliberately broken variants of the CPU runtime, one bug each, as other engines shipped.

`pytest conformance --runtime cpu --fault NAME` runs the suite against the broken variant;
tests/test_faults.py shows that each one fails the conformance tests listed in `caught_by`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Fault:
    name: str
    what: str
    patch: Callable  # (ops module, monkeypatch) -> None
    caught_by: str  # a pytest -k expression naming the conformance tests that must fail


def _window_shift(shift: int | None):
    def patch(ops, mp):
        import dataclasses

        orig = ops.visible

        def visible(q_pos, k_pos, spec):
            if shift is None:  # no window at all
                delta = q_pos[:, None] - k_pos[None, :]
                return delta >= 0
            return orig(q_pos, k_pos, dataclasses.replace(spec, window=spec.window + shift) if spec.sliding else spec)

        mp.setattr(ops, "visible", visible)

    return patch


def _rope_freqs_ignored(ops, mp):
    orig = ops.rope_angles
    mp.setattr(ops, "rope_angles", lambda spec, pos, ff: orig(spec, pos, None))


def _rope_freqs_on_sliding(ops, mp):
    import dataclasses

    orig = ops.rope_angles

    def rope_angles(spec, pos, ff):
        if spec.sliding and ff is not None:
            spec = dataclasses.replace(spec, uses_rope_freqs=True)
            ff = np.resize(ff, spec.n_rot // 2)
        return orig(spec, pos, ff)

    mp.setattr(ops, "rope_angles", rope_angles)


def _v_from_attn_v(ops, mp):
    mp.setattr(ops, "value_tensor", lambda spec: "attn_v")


def _v_after_k_norm_rope(ops, mp):
    mp.setattr(ops, "value", lambda v_raw, k_raw, k_final: k_final if v_raw is None else v_raw)


def _inv_sqrt_scale(ops, mp):
    mp.setattr(ops, "attention_scale", lambda spec: 1.0 / np.sqrt(spec.head_dim))


def _one_plus_w_norm(ops, mp):
    orig = ops.rms_norm
    mp.setattr(ops, "rms_norm", lambda x, w, eps: orig(x, None if w is None else 1.0 + w, eps))


def _no_softcap(ops, mp):
    mp.setattr(ops, "softcap", lambda logits, cap: logits)


def _rewind_without_reevaluation(ops, mp):
    from g4c.session import KVPlan

    mp.setattr(KVPlan, "keeps", lambda self, base, next_pos, start: True)


FAULTS = {
    f.name: f
    for f in (
        Fault("window-minus-1", "sliding window of W-1 keys", _window_shift(-1), "test_window"),
        Fault("window-plus-1", "sliding window of W+1 keys", _window_shift(+1), "test_window"),
        Fault("no-window", "sliding layers attend to every earlier key", _window_shift(None), "test_window"),
        Fault("rope-freqs-ignored", "full layers rotate every pair (rope_freqs unused)", _rope_freqs_ignored, "test_rope"),
        Fault("rope-freqs-on-sliding", "rope_freqs also divides sliding-layer angles", _rope_freqs_on_sliding, "test_rope"),
        Fault("v-from-attn-v", "V read from attn_v on every layer (k_eq_v full layers have none)", _v_from_attn_v, "test_k_eq_v"),
        Fault("v-after-k-norm-rope", "k_eq_v V taken from K after k_norm and RoPE", _v_after_k_norm_rope, "test_k_eq_v"),
        Fault("inv-sqrt-d-scale", "attention scaled by 1/sqrt(head_dim)", _inv_sqrt_scale, "test_dense"),
        Fault("one-plus-w-norm", "RMSNorm multiplies by (1 + w)", _one_plus_w_norm, "test_dense"),
        Fault("no-softcap", "final logit softcap skipped", _no_softcap, "test_dense"),
        Fault("rewind-without-reevaluation", "a rewind keeps what the sliding rings still hold, though they overwrote "
              "keys the kept positions' successors need", _rewind_without_reevaluation, "test_rewind_keeps_prefix"),
    )
}


def apply(name: str, monkeypatch) -> Fault:
    from runtimes.cpu import ops

    fault = FAULTS[name]
    fault.patch(ops, monkeypatch)
    return fault
