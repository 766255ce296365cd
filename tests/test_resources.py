"""What this machine lacks is not the runtime's fault: memory a runtime plans, or disk for a
fixture, short of what is needed is a ResourceUnavailable naming the figures (one line from
the command line, a skip in the conformance suite, never a failure or a pass); a fixture write
that fails leaves nothing behind, and the temp files of writers that died are removed."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from g4c import cli
from g4c.conformance.harness import available_or_skip, load_model
from g4c.errors import G4CError, InputError, ResourceUnavailable
from g4c.fixtures import generate
from g4c.model import Model
from g4c.plan import GIB, MemoryPlan, check_fits
from g4c.runtimes.cpu import CpuRuntime

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty fixture cache of this test's own."""
    monkeypatch.setenv("G4C_CACHE", str(tmp_path / "cache"))
    return generate.cache_dir()


def short_disk(monkeypatch, free: int) -> None:
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=free))


def fail_mid_write(monkeypatch, err: OSError, after: int = 2) -> None:
    """The writer raises `err` at its (after+1)th tensor, once it has written some of the file."""
    real = generate.GGUFWriter.write_tensor_data
    calls = []

    def write_tensor_data(self, *a, **k):
        calls.append(1)
        if len(calls) > after:
            raise err
        return real(self, *a, **k)

    monkeypatch.setattr(generate.GGUFWriter, "write_tensor_data", write_tensor_data)


def test_check_fits_raises_resource_unavailable_with_figures():
    at = lambda n: MemoryPlan("x", n, 1, 10 * GIB, n * (1 << 20), 0, "host")  # noqa: E731
    with pytest.raises(ResourceUnavailable) as e:
        check_fits(at, 8192, 262144, 12 * GIB, "model.gguf on x")
    err = e.value
    assert isinstance(err, G4CError) and not isinstance(err, InputError)
    assert (err.resource, err.needed, err.available, err.where) == ("host memory", at(8192).total, 12 * GIB,
                                                                     "model.gguf on x")
    assert "18.00 GiB of host memory" in str(err) and "12.00 GiB are available" in str(err)


def test_harness_load_skips_when_memory_is_short(monkeypatch):
    """Tests load sessions directly from the runtime fixture: its load() skips, with figures."""
    monkeypatch.setattr("g4c.runtimes.cpu.runtime.available_host_memory", lambda: 1 << 20)
    with pytest.raises(pytest.skip.Exception, match=r"this machine lacks host memory: .* needs .* GiB of host memory.*"
                                                    r"but 0\.00 GiB are available"):
        available_or_skip(CpuRuntime(), "cpu").load(load_model("micro"), 16)


PLUGIN = """
import pytest

def pytest_configure(config):
    # the tester's machine: 14.5 GiB available where the schema preset's plan at context 262144 needs 15.5
    pytest.MonkeyPatch().setattr("g4c.runtimes.cpu.runtime.available_host_memory", lambda: {available})
"""


def test_rope_schema_short_of_memory_is_skipped_with_figures(tmp_path):
    """test_rope_long_position[schema] on a machine 1 GiB short: skipped, the reason naming the
    GiB needed and available, not failed (as it was, counted against the runtime)."""
    model = Model(generate.ensure("schema"))
    needed = CpuRuntime.memory_plan(model, model.config.n_ctx_train).total
    available = needed - GIB
    (tmp_path / "g4c_low_memory.py").write_text(PLUGIN.format(available=available))
    out = tmp_path / "results.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, "-m", "pytest", "conformance/test_rope.py", "--runtime", "cpu",
                        "-k", "test_rope_long_position and schema and 4096", "-p", "no:cacheprovider",
                        "-p", "g4c_low_memory", "--results-json", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.exists(), r.stdout[-3000:] + r.stderr[-3000:]
    (result,) = json.loads(out.read_text())["tests"].values()
    assert result["outcome"] == "skipped", result
    assert result["reason"].startswith("this machine lacks host memory:"), result["reason"]
    assert f"needs {needed / GIB:.2f} GiB of host memory" in result["reason"], result["reason"]
    assert f"but {available / GIB:.2f} GiB are available" in result["reason"], result["reason"]


def test_disk_too_small_is_refused_before_writing(cache, monkeypatch):
    short_disk(monkeypatch, 1000)
    with pytest.raises(ResourceUnavailable) as e:
        generate.ensure("micro")
    p, qt = generate.resolve("micro")
    needed = generate.file_bytes(p, qt)
    assert (e.value.resource, e.value.needed, e.value.available, e.value.where) == ("disk", needed, 1000, str(cache))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{cache}/micro-") and f"({needed} bytes)" in msg and "(1000 bytes) free" in msg
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT], ids=["ENOSPC", "EDQUOT"])
def test_disk_filling_up_mid_write_is_resource_unavailable(cache, monkeypatch, code):
    fail_mid_write(monkeypatch, OSError(code, os.strerror(code)))
    with pytest.raises(ResourceUnavailable) as e:
        generate.ensure("micro")
    assert e.value.resource == "disk" and e.value.where == str(cache)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{cache}/micro-") and f"({os.strerror(code)} while writing)" in msg
    assert list(cache.iterdir()) == [], "the partial temp file was left behind"


def test_write_refused_by_the_os_names_the_path(cache, monkeypatch):
    """Permission denied (or a read-only file system) on the temp file: one line naming the
    path, nothing left behind."""
    def denied(self, *a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self.path))

    monkeypatch.setattr(generate.GGUFWriter, "write_header_to_file", denied)
    with pytest.raises(G4CError) as e:
        generate.ensure("micro")
    assert not isinstance(e.value, ResourceUnavailable)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{cache}/micro-") and "Permission denied" in msg
    assert list(cache.iterdir()) == []


def test_cache_under_a_file_names_the_path(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("G4C_CACHE", str(tmp_path / "file"))
    with pytest.raises(G4CError, match=rf"^{tmp_path}/file/fixtures: cannot create the directory for micro-.*: Not a directory$"):
        generate.ensure("micro")


def test_read_only_cache_names_the_path(cache):
    cache.mkdir(parents=True)
    cache.chmod(0o555)
    try:
        try:
            (cache / "probe").touch()
        except PermissionError:
            pass
        else:  # root (CAP_DAC_OVERRIDE), as in CI
            pytest.skip("this user writes into a chmod 555 directory anyway; "
                        "test_write_refused_by_the_os_names_the_path covers the error path")
        with pytest.raises(G4CError, match=rf"^{cache}/micro-.*: cannot write the fixture: Permission denied$"):
            generate.ensure("micro")
    finally:
        cache.chmod(0o755)


@pytest.mark.parametrize("when", ["before", "during"])
def test_cli_fixture_on_a_full_disk_is_one_line(cache, monkeypatch, capsys, when):
    if when == "before":
        short_disk(monkeypatch, 1000)
    else:
        fail_mid_write(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert cli.main(["fixture", "micro"]) == 2
    err = capsys.readouterr().err  # after the progress bar's line, when it had started
    last = err.rstrip("\n").rsplit("\n", 1)[-1]
    assert "Traceback" not in err and last.startswith(f"g4c fixture: error: {cache}/micro-"), err
    assert "of disk in" in last and "free" in last, err


def test_conformance_fixture_short_of_disk_is_a_skip_with_figures(cache, monkeypatch):
    short_disk(monkeypatch, 1000)
    with pytest.raises(pytest.skip.Exception, match=r"this machine lacks disk: .* needs .* bytes\) of disk in .*"
                                                    r"\(1000 bytes\) free"):
        load_model("micro", embd_std=0.3)


def test_file_bytes_bounds_the_written_file(tmp_path):
    for preset in ("micro", "tiny"):
        p, qt = generate.resolve(preset)
        out = tmp_path / f"{preset}.gguf"
        generate.write(out, p, qt)
        size, bound = out.stat().st_size, generate.file_bytes(p, qt)
        assert size <= bound <= size + (64 << 10) + 64 * p.n_vocab + 256 * 1000, (preset, size, bound)


def test_dead_writers_temp_files_are_removed_live_ones_kept(cache):
    cache.mkdir(parents=True)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # exited and reaped: its pid no longer exists
    dead = cache / f".micro-q4_0-s0-0123456789.gguf.{child.pid}.tmp"
    live = cache / f".micro-q4_0-s0-0123456789.gguf.{os.getpid()}.tmp"
    for f in (dead, live):
        f.write_bytes(b"partial")
    generate.ensure("micro")
    assert not dead.exists(), "a dead writer's temp file was kept"
    assert live.exists(), "a live writer's temp file was removed"
