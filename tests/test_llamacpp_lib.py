"""A llama.cpp fork by library path (G4C_LLAMA_LIB): a library lacking C functions the
llamacpp runtime calls leaves the runtime unavailable, naming them and the file; a copy of
llama-cpp-python's own libllama is the library loaded, and the settings that go into every
results file name it with its build."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from g4c.runtimes.llamacpp.runtime import C_API, LlamaCppRuntime

# a "fork" that has two of the functions the runtime calls
FORK_C = "int llama_backend_init(void) { return 0; }\nint llama_decode(void) { return 0; }\n"

# run in a fresh interpreter: a process binds llama_cpp to one library, once
PROBE = """
import json
from g4c.conformance.harness import load_model
from g4c.runtimes.llamacpp.runtime import LlamaCppRuntime
rt = LlamaCppRuntime()
av = rt.availability()
rows = len(rt.load(load_model("tiny"), 64).prefill([2, 300, 301])) if av.ok else 0
maps = sorted({line.split()[-1] for line in open("/proc/self/maps") if "libllama" in line})
print(json.dumps({"ok": av.ok, "reason": av.reason, "settings": rt.settings() if av.ok else None, "maps": maps,
                  "rows": rows}))
"""


def _probe(env: dict, before: str = "") -> dict:
    res = subprocess.run([sys.executable, "-c", before + PROBE], env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.splitlines()[-1])


@pytest.fixture
def real_lib(tmp_path) -> Path:
    """A copy of llama-cpp-python's library folder (libllama and the ggml libraries beside it,
    found through its $ORIGIN runpath), as a fork's build folder would hold it."""
    spec = importlib.util.find_spec("llama_cpp")  # found, not imported: that would bind its own library here
    if spec is None:
        pytest.skip("llama-cpp-python is not installed (pip install -e '.[llamacpp]'): no real libllama to copy")
    fork = tmp_path / "fork"
    shutil.copytree(Path(spec.submodule_search_locations[0]) / "lib", fork, symlinks=True)
    return fork / "libllama.so"


def test_library_lacking_functions_is_unavailable(tmp_path, monkeypatch):
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler (cc) to build a library lacking llama.cpp's functions")
    (tmp_path / "fork.c").write_text(FORK_C)
    lib = tmp_path / "libllama.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(tmp_path / "fork.c")], check=True)
    monkeypatch.setenv("G4C_LLAMA_LIB", str(lib))
    av = LlamaCppRuntime().availability()
    assert not av.ok
    missing = [n for n in C_API if n not in ("llama_backend_init", "llama_decode")]
    assert av.reason == (f"G4C_LLAMA_LIB={lib} lacks {len(missing)} of the {len(C_API)} llama.cpp C functions this "
                         f"runtime calls: {', '.join(missing)}")


@pytest.mark.parametrize("name,why", [("absent/libllama.so", "no such file"),
                                      ("libllama-fork.so", "llama-cpp-python loads a file named libllama.so")])
def test_library_path_that_cannot_be_loaded(tmp_path, monkeypatch, name, why):
    path = tmp_path / name
    if path.parent.exists():
        path.write_bytes(b"")
    monkeypatch.setenv("G4C_LLAMA_LIB", str(path))
    av = LlamaCppRuntime().availability()
    assert not av.ok and av.reason.startswith(f"G4C_LLAMA_LIB={path}: {why}"), av.reason


def test_copy_of_real_library_is_loaded_and_recorded(real_lib):
    got = _probe({"G4C_LLAMA_LIB": str(real_lib)})
    assert got["ok"], got["reason"]
    assert got["maps"] == [str(real_lib)]  # the copy alone: not the package's libllama beside it
    assert got["rows"] == 3
    assert got["settings"]["library"] == str(real_lib)
    assert got["settings"]["library_build"]["ggml_version"]  # ggml_version(), exported by the ggml it was built with
    assert got["settings"]["driver"].startswith("llama-cpp-python ")


def test_library_chosen_after_llama_cpp_loaded_is_unavailable(real_lib):
    got = _probe({"G4C_LLAMA_LIB": str(real_lib)}, before="import os\nos.environ.pop('G4C_LLAMA_LIB')\nimport llama_cpp\n"
                                                          f"os.environ['G4C_LLAMA_LIB'] = {str(real_lib)!r}\n")
    assert not got["ok"]
    assert got["reason"].startswith(f"G4C_LLAMA_LIB={real_lib}, but this process loaded llama.cpp from ")
    assert "set G4C_LLAMA_LIB before the suite starts" in got["reason"]
