"""Op-level cases (g4c.opcases.CASES), in the manner of llama.cpp's test-backend-ops: one
list of cases run on every runtime, each compared with its float64 expected output (weights
dequantized by gguf.quants, the rest from the spec's equations) by NMSE against a limit
derived from the runtime's number format. A runtime offers its ops through
`capabilities.ops` and `run_op`; an op it does not declare, a weight type it does not read,
or a case it refuses (UnsupportedModelError naming the dimension) is not supported.

    pytest conformance/test_ops.py --runtime vulkan -k attention
    pytest conformance --case 'test_op[opcase=rope-d512-h2-b1000000-ff-p262140-n4]'
"""

import pytest

from g4c.errors import UnsupportedModelError
from g4c.opcases import BY_ID, compare, prepared, unsupported

from g4c.conformance.harness import NOT_SUPPORTED


@pytest.mark.parametrize("opcase", list(BY_ID))
def test_op(runtime, tol, metric, opcase):
    case = BY_ID[opcase]
    lacks = unsupported(runtime, case)
    if lacks:
        pytest.skip(f"{NOT_SUPPORTED} {lacks}")
    inputs, want = prepared(case)
    try:
        got, _ = runtime.run_op(case, inputs)
    except UnsupportedModelError as e:
        pytest.skip(f"{NOT_SUPPORTED} {e}")
    rep = compare(case, got, want, tol, inputs)
    metric("nmse", rep.nmse)
    metric("nmse_limit", rep.limit)
    metric("max_abs", rep.max_abs)
    assert rep.ok, f"{case.id} on {runtime.name}: {rep.line()}"
