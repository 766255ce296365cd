"""The memory planner: KV figures worked by hand from spec section 3.2, the largest-context
search, and runtimes refusing a context that does not fit while naming the one that does."""

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from g4c import fixtures
from g4c import plan as planmod
from g4c.errors import ResourceUnavailable
from g4c.model import Model
from g4c.plan import MemoryPlan, kv_bytes, largest_context, parse_bytes
from g4c.runtimes.cpu import CpuRuntime
from g4c.runtimes.cuda.runtime import CudaRuntime


@pytest.fixture(scope="module")
def schema():
    return Model(fixtures.ensure("schema"))


def test_kv_bytes_12b_geometry_by_hand(schema):
    c = schema.config  # the real 12B's layers: 8 full (1 KV head x 512), 40 sliding (8 x 256), W 1024
    full = 8 * 2 * 1 * 512 * 4
    sliding = 40 * 2 * 8 * 256 * 4
    assert kv_bytes(c, 8192) == full * 8192 + sliding * 1024 == 939_524_096
    assert kv_bytes(c, 512) == (full + sliding) * 512
    assert kv_bytes(c, 8192, n_seq=4) == 4 * 939_524_096


def test_kv_bytes_shared_layers(schema):
    """The last N layers reuse an earlier cache (E2B/E4B): here layer 46 (sliding) and 47 (full)."""
    c = dataclasses.replace(schema.config, shared_kv_layers=2)
    assert kv_bytes(c, 8192) == 939_524_096 - 2 * 8 * 256 * 4 * 1024 - 2 * 512 * 4 * 8192


@given(memory=st.integers(0, 10**7), per_token=st.integers(1, 1000), fixed=st.integers(0, 10**6))
def test_largest_context_is_the_boundary(memory, per_token, fixed):
    at = lambda n: MemoryPlan("x", n, 1, fixed, per_token * n, 0, "host")  # noqa: E731
    best = largest_context(at, memory, 262144)
    if best == 0:
        assert at(1).total > memory
    else:
        assert at(best).total <= memory and (best == 262144 or at(best + 1).total > memory)


def test_cpu_refuses_and_names_largest(schema, monkeypatch):
    budget = CpuRuntime.memory_plan(schema, 20000).total
    monkeypatch.setattr("g4c.runtimes.cpu.runtime.available_host_memory", lambda: budget)
    with pytest.raises(ResourceUnavailable, match=r"max_context 100000 needs .* the largest context that fits is (\d+)") as e:
        CpuRuntime().load(schema, 100000)
    best = int(str(e.value).rsplit(" ", 1)[1])
    assert CpuRuntime.memory_plan(schema, best).total <= budget < CpuRuntime.memory_plan(schema, best + 1).total
    CpuRuntime().load(schema, best)  # the context it names does load


def test_cpu_reserved_kv_equals_plan(schema):
    sess = CpuRuntime().load(schema, 4096, reserve=True)
    assert sess.memory_report()["kv"] == CpuRuntime.memory_plan(schema, 4096).kv


def test_cuda_plan_without_gpu(schema):
    p = CudaRuntime.memory_plan(schema, 8192)
    assert p.where == "device" and p.kv == kv_bytes(schema.config, 8192) and p.weights == schema.weight_bytes


def test_parse_bytes():
    assert parse_bytes("12GiB") == 12 << 30 and parse_bytes("80GB") == 80 * 10**9 and parse_bytes("512B") == 512
    for bad in ("lots", "512"):  # a bare number has no unit: 12 would have meant 12 bytes
        with pytest.raises(Exception, match="cannot read a memory size"):
            parse_bytes(bad)
    assert planmod.GIB == 1 << 30
