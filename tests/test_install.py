"""One namespace on install (issue 16): everything installs under the package g4c.

The repository keeps its top-level folders (runtimes/, fixtures/, conformance/, benchmarks/,
reports/), mapped by setuptools' package-dir to g4c.runtimes, g4c.fixtures, ... A wheel that
installed them as top-level packages collided with PyPI distributions of those names (one
overwrote fixtures/__init__.py, uninstalling another deleted ours). `nox -s wheel` installs the
built wheel beside such distributions; these tests hold the source tree to the same rule.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("runtimes", "fixtures", "conformance", "benchmarks", "reports")  # each a PyPI name too


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_one_top_level_package():
    """Every installed package is g4c or under it, each folder maps to g4c.<folder>, and every
    folder with an __init__.py is listed (one left out would be missing from the wheel)."""
    cfg = _config()
    assert all(p == "g4c" or p.startswith("g4c.") for p in cfg["packages"]), cfg["packages"]
    assert cfg["package-dir"] == {"g4c": "g4c", **{f"g4c.{f}": f for f in FOLDERS}}
    listed = set(cfg["packages"])
    for folder in ("g4c", *FOLDERS):
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT).parts
            name = ".".join(rel) if rel[0] == "g4c" else ".".join(("g4c", *rel))
            assert name in listed, f"{init.parent} is a package but pyproject.toml does not install it as {name}"
    for group, entries in _entry_points().items():
        for name, target in entries.items():
            assert target.startswith("g4c."), f"entry point {group} {name} = {target} names a bare top-level module"


def _entry_points() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]


def test_no_bare_imports():
    """No module imports runtimes, fixtures, conformance, benchmarks or reports as a top-level
    name: installed, those resolve to whatever distribution owns the name (or to a user's own
    folder in the working directory)."""
    bad = []
    for path in sorted(ROOT.glob("*/**/*.py")) + [ROOT / "noxfile.py"]:
        if any(part.startswith(".") or part.endswith(".egg-info") or part == "build" for part in path.relative_to(ROOT).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.ImportFrom) and node.level and path.relative_to(ROOT).parts[0] in ("conformance", "benchmarks"):
                # pytest imports the test modules of a source checkout as conformance.test_x: a
                # relative import there would load a second copy of harness beside g4c.conformance's
                names = [f"conformance (relative, line {node.lineno})"]
            bad += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names if n.split(".")[0] in FOLDERS]
    assert not bad, "bare imports:\n" + "\n".join(bad)


def test_pyargs_and_fixture_from_a_directory_with_decoys(tmp_path):
    """From a directory holding the user's own conformance/ and fixtures/ packages (first on
    sys.path under python -m), `pytest --pyargs g4c.conformance --runtime cpu` runs ours and
    `g4c fixture` writes ours."""
    for decoy in ("conformance", "fixtures", "runtimes"):
        (tmp_path / decoy).mkdir()
        (tmp_path / decoy / "__init__.py").write_text(f"raise ImportError('the user\\'s own {decoy} was imported')\n")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    r = subprocess.run([sys.executable, "-m", "pytest", "--pyargs", "g4c.conformance", "--runtime", "cpu", "--case", "test_inputs",
                        "-p", "no:cacheprovider", "-q"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "4 passed" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "g4c.cli", "fixture", "tiny"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith(".gguf"), r.stdout + r.stderr
