"""Throughput benchmarks (pytest-benchmark), once per available runtime.

    pytest benchmarks --benchmark-only                                  tiny preset, every available runtime
    pytest benchmarks --benchmark-only --bench-model 12b --bench-runtime cuda \\
        --benchmark-json reports/out/bench-cuda-h100.json               the 12B-shaped fixture on a GPU
    G4C_BENCH_MODEL=/models/gemma-4-12b-it-qat-q4_0.gguf pytest benchmarks --benchmark-only

    pytest benchmarks --benchmark-only --bench-runtime cpu,llamacpp --bench-pp 8,64,512 --bench-tg 16
                                                                        both runtimes on one file, short runs

Options (each with an environment variable): --bench-model (G4C_BENCH_MODEL; a fixture
preset, preset:TYPE such as 12b:Q4_K, or a GGUF path; default tiny), --bench-runtime (G4C_BENCH_RUNTIME; repeatable or
comma-separated; default every registered runtime, absent ones skipped with the reason; the
Vulkan load-width probes run only where vulkan is among them), --bench-pp (G4C_BENCH_PP;
prompt lengths of the prefill test; default 512), --bench-tg (G4C_BENCH_TG; decode lengths of
the tg test; default 128), --bench-depths (G4C_BENCH_DEPTHS; default 1024,8192,32768),
--bench-rounds (G4C_BENCH_ROUNDS; default 3), --bench-machine (G4C_MACHINE; the label results
are merged under in reports; default the host name). A benchmark that the machine's memory
cannot hold is skipped with the figures (g4c.errors.ResourceUnavailable), wherever in the
test the runtime finds out.

Each benchmark stores in extra_info what the reports need: tokens/s (mean and standard
deviation over rounds, as llama-bench), bytes read per step, the runtime's measured memory
bandwidth and the roofline fraction (g4c.bench). The session ends with a llama-bench table.
"""

from __future__ import annotations

import os
import platform

import pytest

from g4c.conformance.harness import available_or_skip, resources_or_skip
from g4c import bench, provenance
from g4c import runtime as registry
from g4c.errors import G4CError


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


# the options (--runtime, ...): g4c/pytest_options.py, a pytest11 entry point


def _sizes(config, option: str, env: str, default: str) -> list[int]:
    """Comma-separated counts of 1 or more from the option, else its environment variable, else
    the default, each once; pytest.UsageError naming where a value came from otherwise."""
    given = config.getoption(option)
    text = given or _env(env, default)
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise pytest.UsageError(f"{option if given else env} must be comma-separated integers of 1 or more, got {text!r}")
    return list(dict.fromkeys(sizes))


def pytest_configure(config):
    asked = [r for v in (config.getoption("--bench-runtime") or [_env("G4C_BENCH_RUNTIME", "")]) for r in v.split(",") if r]
    try:
        config._g4c_bench_runtimes = registry.select(list(dict.fromkeys(asked)))
    except G4CError as e:
        raise pytest.UsageError(str(e)) from None
    config._g4c_bench_sizes = {
        "n_prompt": ("pp", _sizes(config, "--bench-pp", "G4C_BENCH_PP", "512")),
        "n_gen": ("tg", _sizes(config, "--bench-tg", "G4C_BENCH_TG", "128")),
        "depth": ("d", _sizes(config, "--bench-depths", "G4C_BENCH_DEPTHS", "1024,8192,32768")),
    }
    config._g4c_bench_rows = []
    config._g4c_kernel_rows = []  # benchmarks/test_kernels.py's lines for the summary


def pytest_generate_tests(metafunc):
    if "bench_runtime" in metafunc.fixturenames:
        names = list(metafunc.config._g4c_bench_runtimes)
        metafunc.parametrize("bench_runtime", names, indirect=True, ids=names)
    for arg, (prefix, sizes) in metafunc.config._g4c_bench_sizes.items():
        if arg in metafunc.fixturenames:
            metafunc.parametrize(arg, sizes, ids=[f"{prefix}{n}" for n in sizes])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    # a runtime that grows its caches as positions are held (llamacpp's context) learns that
    # the memory is short when a test prefills or decodes, not only at load
    with resources_or_skip():
        return (yield)


@pytest.fixture
def bench_runtime(request):
    return available_or_skip(request.config._g4c_bench_runtimes[request.param], request.param)


@pytest.fixture(scope="session")
def bench_model(request):
    from g4c.model import Model

    spec = request.config.getoption("--bench-model") or _env("G4C_BENCH_MODEL", "tiny")
    if os.path.exists(spec):
        return Model(spec)
    from g4c import fixtures
    from g4c.fixtures.generate import PRESETS

    preset, _, qtype = spec.partition(":")  # a preset, or preset:TYPE (12b:Q4_K: the 12b preset's matrices in Q4_K)
    if preset not in PRESETS:
        raise pytest.UsageError(f"--bench-model {spec!r} is neither a file nor a fixture preset ({', '.join(PRESETS)}), "
                                "optionally with :TYPE")
    return Model(fixtures.ensure(preset, qtype or None))


@pytest.fixture(scope="session")
def rounds(request):
    return request.config.getoption("--bench-rounds") or int(_env("G4C_BENCH_ROUNDS", "3"))


_bandwidth: dict = {}


@pytest.fixture
def bandwidth(bench_runtime):
    """The runtime's memory bandwidth, measured once per session (host read bandwidth for a
    runtime that offers no measurement of its own)."""
    name = bench_runtime.name
    if name not in _bandwidth:
        _bandwidth[name] = (bench_runtime.memory_bandwidth() if registry.has_method(bench_runtime, "memory_bandwidth")
                            else {**bench.host_read_bandwidth(), "note": "runtime measures none; host"})
    return _bandwidth[name]


@pytest.fixture
def record(request, benchmark, bench_runtime, bench_model, bandwidth):
    """record(test, tokens_per_round, bytes_per_step, steps_per_round, **extra): after the
    timed rounds, put throughput and roofline into extra_info and the llama-bench rows."""

    def done(test: str, tokens: int, bytes_per_step: int, steps: int, **extra):
        stats = benchmark.stats
        if stats is None:  # --benchmark-disable: ran once, nothing measured
            return
        times = list(stats.stats.data)
        rates = [tokens / t for t in times]
        mean = sum(rates) / len(rates)
        std = (sum((r - mean) ** 2 for r in rates) / (len(rates) - 1)) ** 0.5 if len(rates) > 1 else float("nan")
        steps_per_s = steps * len(times) / sum(times)
        cfg = request.config
        machine = cfg.getoption("--bench-machine") or _env("G4C_MACHINE", platform.node())
        info = {
            "runtime": bench_runtime.name,
            "backend": registry.backend(bench_runtime),
            "machine": machine,
            "device": bandwidth.get("device", "host"),
            "model": bench.model_label(bench_model),
            "model_file": os.path.basename(str(bench_model.path)),
            "size_bytes": bench_model.weight_bytes,
            "params": bench.n_params(bench_model),
            "test": test,
            "tokens_per_round": tokens,
            "tok_s": mean,
            "tok_s_std": std,
            "bytes_per_step": bytes_per_step,
            "bytes_per_token": bytes_per_step * steps / tokens,
            "achieved_bytes_per_s": bytes_per_step * steps_per_s,
            "bandwidth_bytes_per_s": bandwidth["bytes_per_s"],
            "bandwidth_method": bandwidth["method"],
            "roofline_fraction": bytes_per_step * steps_per_s / bandwidth["bytes_per_s"],
            **extra,
        }
        benchmark.extra_info.update(info)
        cfg._g4c_bench_rows.append(info)

    return done


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """The run's provenance (g4c.provenance: commit, date, packages, machine, each runtime's
    device and driver) beside pytest-benchmark's own machine_info and commit_info."""
    output_json["provenance"] = provenance.record(config._g4c_bench_runtimes)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    kernel_rows = getattr(config, "_g4c_kernel_rows", [])
    if kernel_rows:
        terminalreporter.section("cpu kernels (benchmarks/test_kernels.py, best of the rounds)")
        for line in kernel_rows:
            terminalreporter.write_line(line)
    rows = getattr(config, "_g4c_bench_rows", [])
    if rows:
        terminalreporter.section("llama-bench table")
        terminalreporter.write(bench.llama_bench_table(rows))
        terminalreporter.section("roofline (bytes read per step x steps/s over measured bandwidth)")
        for r in rows:
            terminalreporter.write_line(
                f"{r['runtime']:8s} {r['test']:14s} {r['tok_s']:10.2f} tok/s  "
                f"{r['achieved_bytes_per_s'] / 1e9:8.3f} GB/s of {r['bandwidth_bytes_per_s'] / 1e9:.1f}  "
                f"{100 * r['roofline_fraction']:6.2f}%")
