"""The HTML report: built from real result files, merged across machines, and rendered in a
real browser (headless Chromium through selenium) in a 1400x900 window with every plot drawn,
no console error, and nothing wider than the window.

The browser test opens $G4C_REPORT when set (CI points it at the report it just built from
its own fresh run), else a report built here from the committed runs in reports/data. It
skips, with the reason, where Chromium, chromedriver or selenium is missing, unless
G4C_REQUIRE_BROWSER=1 (CI sets it), where a missing browser is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from g4c.reports import build

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "reports" / "data"
PLOTS = ["throughput", "roofline", "drift", "heatmap"]
WINDOW = (1400, 900)  # the report must read without horizontal scrolling at this size
# what sticks out: the page wider than the window, a table, the matrix or one of its cells past
# the window's right edge, or a cell whose content is wider than the cell
OVERFLOW_JS = """
const width = document.documentElement.clientWidth, out = [];
if (document.documentElement.scrollWidth > width) out.push(`page ${document.documentElement.scrollWidth} > ${width}`);
for (const e of document.querySelectorAll('table, th, td, #conformance-matrix, #conformance-matrix .row > *')) {
  const r = e.getBoundingClientRect(), what = `${e.tagName}.${e.className} "${e.textContent.slice(0, 40)}"`;
  if (r.right > width + 0.5) out.push(`${what} ends at ${r.right}`);
  if (e.scrollWidth > e.clientWidth + 1) out.push(`${what} holds ${e.scrollWidth} in ${e.clientWidth}`);
}
return out.slice(0, 10);
"""


@pytest.fixture(scope="module")
def committed_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "index.html"
    info = build.build([DATA], out)
    return out, info


def test_committed_runs_give_every_plot(committed_report):
    out, info = committed_report
    assert info["plots"] == PLOTS, f"plots without data: {info['missing']}"
    html = out.read_text()
    # a CPU run here and GPU runs elsewhere, merged into one page
    assert "cpu @ devvm" in html and "cuda @ h100" in html
    assert "llama.cpp" in html  # llama-bench's JSON beside ours


REPORT_CODE = {"commit": "a" * 40, "dirty": False}  # the checkout the tests' reports are built from


def _provenance(commit: str | None, dirty: bool | None, runtimes: dict) -> dict:
    return {"commit": commit, "dirty": dirty, "created": "2026-11-28T09:00:00Z", "packages": {"numpy": "2.4.6"},
            "machine": {"label": "m1", "node": "n1", "cpu": "Xeon", "cpus": 2, "system": "Linux 6.1",
                        "python": "3.11.7"},
            "runtimes": runtimes}


def _test(runtime, module: str, test: str, case: str, outcome: str, **extra) -> dict:
    return {"runtime": runtime, "module": module, "test": test, "params": {}, "case": case, "outcome": outcome,
            "duration_s": 0.1, "metrics": {}, **extra}


def _conformance_doc(outcome: str, commit: str | None = REPORT_CODE["commit"], dirty: bool | None = False) -> dict:
    runtimes = {"cpu": {"available": True, "reason": "", "precision": "f32",
                        "settings": {"device": "Xeon", "driver": "numpy 2.4.6, scipy-openblas 0.3.31", "threads": 2}},
                "gpu": {"available": False, "reason": "no device", "precision": "f32"}}
    failure = {"message": "AssertionError: first divergence at layer 3 op attn_out"} if outcome == "failed" else {}
    return {"suite": "gemma4-conformance", "format": 2, "created": "2026-11-28T09:00:00Z",
            "provenance": _provenance(commit, dirty, runtimes), "runtimes": runtimes, "fault": None, "cases": [],
            "counts": {}, "tests": {
                "conformance/test_dense.py::test_dense_logits[cpu-variant=12b-like]": _test(
                    "cpu", "test_dense", "test_dense_logits", "test_dense_logits[variant=12b-like]", outcome,
                    metrics={"max_abs_dlogit": 0.25}, **failure),
                "conformance/test_dense.py::test_dense_logits[gpu-variant=12b-like]": _test(
                    "gpu", "test_dense", "test_dense_logits", "test_dense_logits[variant=12b-like]", "skipped",
                    reason="runtime gpu unavailable: no device"),
                "conformance/test_header.py::test_schema_keys": _test(
                    None, "test_header", "test_schema_keys", "test_schema_keys", "passed")}}


def _build(tmp_path, doc: dict) -> tuple[build.Results, str]:
    (tmp_path / "conformance-x.json").write_text(json.dumps(doc))
    out = tmp_path / "index.html"
    build.build([tmp_path], out, code=REPORT_CODE)
    return build.load([tmp_path]), out.read_text()


def test_matrix_groups_modules_and_shows_failure_and_device_absence(tmp_path):
    res, html = _build(tmp_path, _conformance_doc("failed"))
    m = build.matrix(build.conformance_frame(res))
    # the absent runtime is no column; a test that takes no runtime goes to the model checks
    assert m["columns"] == ["cpu @ m1", "(model checks) @ m1"]
    dense, header = m["groups"]
    assert dense["module"] == "test_dense" and dense["open"]  # a module with a failure starts unfolded
    assert dense["summary"] == [{"outcome": "failed", "shown": "1 failed"}, None]
    row = dense["rows"][0]
    assert row["case"] == "test_dense_logits[variant=12b-like]"
    cell = row["cells"][0]
    assert cell["outcome"] == "failed" and (cell["metric"], cell["value"]) == ("max_abs_dlogit", "0.25")
    assert "layer 3" in cell["title"]
    assert header["module"] == "test_header" and not header["open"]
    assert header["summary"] == [None, {"outcome": "passed", "shown": "1 passed"}]
    assert 'class="failed"' in html and '<details class="group" id="group-test_dense" open>' in html
    assert '<details class="group" id="group-test_header">' in html  # folded until asked for
    assert "gpu @ m1: no device" in html  # ... but listed as not run, with the reason
    assert "numpy 2.4.6, scipy-openblas 0.3.31" in html  # the column's driver


def test_committed_cuda_emu_runs_get_a_column_of_their_own():
    # its runtime name has a dash; the column comes from each test's runtime field, not its id
    res = build.load(sorted(DATA.glob("conformance-cuda-emu-*.json")))
    assert len(res.conformance) == 2, res.ignored
    frame = build.conformance_frame(res)
    emu = frame[frame["column"].str.startswith("cuda-emu @ ")]
    assert {"test_dense", "test_greedy", "test_rope", "test_weight_types"} <= set(emu["module"]), set(frame["column"])
    checks = frame[frame["column"].str.startswith(build.MODEL_CHECKS)]
    assert len(emu) + len(checks) == len(frame) and checks["runtime"].isna().all()


def test_run_on_other_code_is_marked(tmp_path):
    res, html = _build(tmp_path, _conformance_doc("passed", commit="b" * 40))
    runs = build.column_runs(res, build.conformance_frame(res), REPORT_CODE)
    assert runs["cpu @ m1"][0]["other"] == "commit bbbbbbb, not the report's aaaaaaa"
    assert "⚠ bbbbbbb," in html
    for commit, dirty, why in [(REPORT_CODE["commit"], True, "uncommitted changes in its tree"),
                               (None, None, "commit unknown (run outside a git checkout, without G4C_COMMIT)")]:
        note = build.code_note("f.json", {"provenance": _provenance(commit, dirty, {}), "created": None}, REPORT_CODE)
        assert note["other"] == why
    legacy = build.code_note("f.json", {"provenance": None, "created": "2026-11-23T12:00:00Z"}, REPORT_CODE)
    assert legacy["other"] == "commit unknown (recorded before provenance)" and legacy["date"] == "2026-11-23"


def test_run_on_the_reports_own_code_is_not_marked(tmp_path):
    res, html = _build(tmp_path, _conformance_doc("passed"))
    runs = build.column_runs(res, build.conformance_frame(res), REPORT_CODE)
    assert [r["other"] for rs in runs.values() for r in rs] == [None, None]
    own = '<span class="code" title="conformance-x.json: the code this report is built from"><span>aaaaaaa,</span>'
    assert own in html
    assert "⚠ aaaaaaa" not in html


def test_llama_bench_takes_its_provenance_sidecar(tmp_path):
    shutil.copy(DATA / "llamacpp-bench-12b-h100.json", tmp_path)
    sidecar = _provenance("c" * 40, False, {})
    (tmp_path / "llamacpp-bench-12b-h100.provenance.json").write_text(json.dumps(sidecar))
    (tmp_path / "orphan.provenance.json").write_text(json.dumps(sidecar))
    res = build.load([tmp_path])
    assert res.sources["llamacpp-bench-12b-h100.json"]["provenance"] == sidecar
    assert res.ignored == ["orphan.provenance.json (provenance of orphan.json, which is no llama-bench file among "
                           "the inputs)"]
    out = tmp_path / "index.html"
    build.build([tmp_path], out, code=REPORT_CODE)
    assert "⚠ ccccccc," in out.read_text()  # beside every row of that file


def test_op_perf_runs_become_a_table_of_gb_per_s(tmp_path):
    """An op-perf file (python -m g4c.opcases --perf --json) is read as such, not taken for
    conformance results: its cases are rows, the run a column, a case that failed its check
    shows the outcome instead of a speed."""
    prov = _provenance(REPORT_CODE["commit"], False, {"vulkan": {"available": True, "reason": "",
                                                                  "settings": {"device": "llvmpipe", "path": "wide"}}})
    case = {"op": "matvec", "params": {}, "bytes": 1000, "flops": 500}
    doc = {"suite": "gemma4-conformance", "kind": "op-perf", "format": 1, "created": "2026-11-28T00:00:00Z", "provenance": prov,
           "runtime": "vulkan", "repeat": 5,
           "cases": [{**case, "id": "matvec-Q4_0-67x288-n1", "outcome": "passed", "nmse": 1e-14, "best_s": 1e-6,
                      "gb_per_s": 1.0, "gflop_per_s": 0.5},
                     {**case, "id": "attention-full-d16", "outcome": "failed", "message": "NMSE 0.5 at head 0"}]}
    (tmp_path / "ops-vulkan-m1.json").write_text(json.dumps(doc))
    out = tmp_path / "index.html"
    build.build([tmp_path], out, code=REPORT_CODE)
    res = build.load([tmp_path])
    assert not res.conformance and not res.ignored
    table = build.op_table(res)
    assert table["columns"] == ["vulkan, wide path (m1)"]
    assert [r["cells"][0]["shown"] for r in table["rows"]] == ["1", "failed"]
    html = out.read_text()
    assert 'id="op-table"' in html and "NMSE 0.5 at head 0" in html


def test_fault_catches_become_a_matrix(tmp_path):
    """tests/test_faults.py's G4C_FAULTS_JSON: one row per fault, one column per module of
    the named tests, a fault that a named test did not catch shown as such."""
    nid = "conformance/test_dense.py::test_dense_logits[cpu-12b-like]"
    shape = "conformance/test_shapes.py::test_shape[cpu-hd16-32-g2-w7]"
    fault = {"what": "w", "bug_class": "GQA head mapping", "seconds": 2.0}
    doc = {"suite": "gemma4-conformance", "kind": "fault-catches", "format": 1, "created": "2026-11-28T00:00:00Z",
           "provenance": _provenance(REPORT_CODE["commit"], False, {}),
           "faults": [{**fault, "name": "gqa-modulo", "caught_by": [nid, shape], "caught": False,
                       "outcomes": {nid: {"outcome": "failed", "message": "layer 0 attn_out"},
                                    shape: {"outcome": "passed", "message": None}}}]}
    (tmp_path / "faults-m1.json").write_text(json.dumps(doc))
    out = tmp_path / "index.html"
    build.build([tmp_path], out, code=REPORT_CODE)
    m = build.catch_matrix(build.load([tmp_path]))
    assert m["modules"] == ["test_dense", "test_shapes"] and (m["caught"], m["total"]) == (0, 1)
    assert [(c["shown"], c["outcome"]) for c in m["rows"][0]["cells"]] == [("1/1", "passed"), ("0/1", "failed")]
    assert 'id="catch-table"' in out.read_text()


def test_unknown_files_are_listed_not_used(tmp_path):
    (tmp_path / "other.json").write_text('{"a": 1}')
    (tmp_path / "broken.json").write_text("{")
    res = build.load([tmp_path])
    assert any("other.json" in s for s in res.ignored) and any("broken.json" in s for s in res.ignored)


def _interrupted(doc: dict) -> dict:
    return {**doc, "format": 3, "collected": 150, "not_run": 117, "interrupted": "KeyboardInterrupt after 20.3 s"}


def test_interrupted_run_reads_as_such(tmp_path):
    """A run stopped early (format 3) says so in its matrix column's header, in its row of the
    summary table, and for a runtime it never reached; older files read as finished runs."""
    doc = _interrupted(_conformance_doc("passed"))
    doc["runtimes"] = {**doc["runtimes"], "vk": {"available": True, "reason": "", "precision": "f32"}}
    res, html = _build(tmp_path, doc)
    note, why = "interrupted: 117 of 150 tests not run", "interrupted: 117 of 150 tests not run (KeyboardInterrupt after 20.3 s)"
    runs = build.column_runs(res, build.conformance_frame(res), REPORT_CODE)
    assert [(r["incomplete"], r["incomplete_why"]) for rs in runs.values() for r in rs] == [(note, why)] * 2
    summary = html.split('id="summary-table"')[1].split("</table>")[0]
    head = html.split('<div class="row head">')[1].split("</div>")[0]
    # in the columns of cpu and of the model checks, both from that run
    assert summary.count(f'<span class="incomplete" title="conformance-x.json">⚠ {why}</span>') == 2, summary
    assert head.count(f'<span class="incomplete" title="conformance-x.json: {why}">⚠ {note}</span>') == 2, head
    assert f"vk @ m1: no test reached, run {why} (conformance-x.json)" in html
    for finished in (_conformance_doc("passed"), {**_interrupted(_conformance_doc("passed")), "interrupted": None,
                                                  "not_run": 0}):
        res, html = _build(tmp_path, finished)
        assert "incomplete" not in html.split("</style>")[1], finished.get("format")


def _without(doc, *path):
    """doc less the key at the end of path (keys and list indices)."""
    doc = json.loads(json.dumps(doc))
    *parents, last = path
    inner = doc
    for k in parents:
        inner = inner[k]
    del inner[last]
    return doc


DENSE = "conformance/test_dense.py::test_dense_logits[cpu-variant=12b-like]"


@pytest.mark.parametrize("name, doc, says", [
    ("conformance-x.json", _without(_conformance_doc("passed"), "tests"),
     "(conformance results): missing key tests"),
    ("conformance-x.json", _without(_conformance_doc("passed"), "tests", DENSE, "outcome"),
     f'(conformance results): missing key tests["{DENSE}"].outcome'),
    ("conformance-x.json", _without(_conformance_doc("passed"), "runtimes", "gpu", "reason"),
     '(conformance results): missing key runtimes["gpu"].reason'),
    ("conformance-x.json", _without(_interrupted(_conformance_doc("passed")), "not_run"),
     "(conformance results): missing key not_run"),
    ("conformance-x.json", {**_conformance_doc("passed"), "tests": []},
     "(conformance results): tests is a list, not an object"),
    ("conformance-x.json", {**_conformance_doc("passed"), "runtimes": {}},
     f"(conformance results): tests[\"{DENSE}\"].runtime is 'cpu', which is not among runtimes"),
    ("bench-m1.json", {"machine_info": {}, "benchmarks": [{"extra_info": {"tok_s": 5.0}}]},
     "(pytest-benchmark): missing key benchmarks[0].extra_info.runtime"),
    ("llama-bench-m1.json", [{"avg_ts": 5.0, "n_gen": 128, "model_size": 10}],
     "(llama-bench): missing key [0].model_n_params"),
    ("ops-m1.json", {"suite": "gemma4-conformance", "kind": "op-perf", "runtime": "cpu",
                     "cases": [{"id": "matvec", "op": "matvec", "outcome": "passed"}]},
     "(op perf): missing key cases[0].bytes"),
    ("faults-m1.json", {"suite": "gemma4-conformance", "kind": "fault-catches",
                        "faults": [{"name": "f", "what": "w", "caught": True, "caught_by": []}]},
     "(fault catches): missing key faults[0].outcomes"),
])
def test_recognised_file_without_a_key_names_file_and_key(tmp_path, name, doc, says):
    (tmp_path / name).write_text(json.dumps(doc))
    with pytest.raises(build.ReportError) as e:
        build.load([tmp_path])
    assert str(e.value) == f"{tmp_path / name} {says}"


def _report(capsys, *args) -> tuple[int, str, str]:
    from g4c.cli import main

    try:
        code = main(["report", *map(str, args)])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_g4c_report_of_named_files_and_its_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("a").mkdir()
    Path("a/conformance-x.json").write_text(json.dumps(_conformance_doc("failed")))
    code, out, err = _report(capsys, "a/conformance-x.json", "--out", "r.html")
    assert code == 0 and out.startswith("wrote r.html: 1 conformance files"), (out, err)
    assert "cpu @ m1" in Path("r.html").read_text()
    Path("a/conformance-x.json").write_text(json.dumps(_without(_conformance_doc("failed"), "tests", DENSE, "outcome")))
    for named, says in [("a", f'a/conformance-x.json (conformance results): missing key tests["{DENSE}"].outcome'),
                        ("missing.json", "missing.json: no such result file or folder")]:
        code, out, err = _report(capsys, named)
        assert (code, err) == (2, f"g4c report: error: {says}\n")
    Path("a/conformance-x.json").write_text(json.dumps(_conformance_doc("failed")))
    code, out, err = _report(capsys, "a", "--out", "r.html/index.html")  # r.html is a file
    assert code == 2 and err.startswith("g4c report: error: cannot write the report to r.html/index.html: "), err
    assert len(err.splitlines()) == 1


def test_report_defaults_are_in_the_current_directory(tmp_path, capsys, monkeypatch):
    """Nothing named: g4c run's conformance-results.json into report.html; from a folder with
    reports/data (the repository's layout, as nox runs it), that folder into
    reports/out/index.html."""
    monkeypatch.chdir(tmp_path)
    code, out, err = _report(capsys)
    assert code == 2 and err.startswith("g4c report: error: no result files named, and none of reports/data"), err
    Path("conformance-results.json").write_text(json.dumps(_conformance_doc("passed")))
    code, out, err = _report(capsys)
    assert code == 0 and out.startswith("wrote report.html: 1 conformance files"), (out, err)
    Path("reports/data").mkdir(parents=True)
    Path("reports/data/conformance-x.json").write_text(json.dumps(_conformance_doc("failed")))
    assert build.main([]) == 0
    assert 'class="failed"' in Path("reports/out/index.html").read_text()


def _browser():
    missing = [p for p in ("chromium", "chromedriver") if not shutil.which(p)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        why = f"no browser to render the report: {', '.join(missing)} not installed (Debian chromium, chromium-driver)"
        if os.environ.get("G4C_REQUIRE_BROWSER") == "1":
            pytest.fail(why + "; G4C_REQUIRE_BROWSER=1 asks for the browser test")
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def test_report_renders_in_browser(committed_report):
    path = Path(os.environ["G4C_REPORT"]) if os.environ.get("G4C_REPORT") else committed_report[0]
    assert path.exists(), f"report {path} does not exist"
    driver = _browser()
    try:
        driver.get(path.resolve().as_uri())
        state = driver.execute_script(
            "return Array.from(document.querySelectorAll('img.plot')).map(i => "
            "({id: i.closest('figure').id, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight, "
            "shown: i.getBoundingClientRect().width}))")
        nodata = driver.execute_script("return Array.from(document.querySelectorAll('.nodata')).map(e => e.id)")
        cells = driver.execute_script("return document.querySelectorAll('#conformance-matrix .passed').length")
        overflow_folded = driver.execute_script(OVERFLOW_JS)
        shot = os.environ.get("G4C_REPORT_SCREENSHOT")
        if shot:  # the whole page as it opens, 1400 pixels wide (the window's height includes its frame)
            height = driver.execute_script(
                "return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight")
            driver.set_window_size(WINDOW[0], min(height, 16000))
            driver.save_screenshot(shot)
            driver.set_window_size(*WINDOW)
        # a folded module shows its summary row only, and its cases once the summary is clicked
        unfolded = driver.execute_script(
            "const d = document.querySelector('#conformance-matrix details:not([open])');"
            "if (!d) return null;"
            "const height = () => d.getBoundingClientRect().height, summary = d.querySelector('summary');"
            "const before = [height(), summary.getBoundingClientRect().height];"
            "summary.click();"
            "return [...before, height()];")
        driver.execute_script("document.querySelectorAll('#conformance-matrix details').forEach(d => d.open = true)")
        overflow_open = driver.execute_script(OVERFLOW_JS)
        log = driver.get_log("browser")
    finally:
        driver.quit()
    assert [s["id"] for s in state] == [f"plot-{p}" for p in PLOTS] and not nodata, (state, nodata)
    bad = [s for s in state if not (s["complete"] and s["w"] > 0 and s["h"] > 0 and s["shown"] > 0)]
    assert not bad, f"plots that did not render: {bad}"
    assert cells > 0, "the conformance matrix shows no passed test"
    assert unfolded and unfolded[0] == unfolded[1] < unfolded[2], f"no folded module opens on a click: {unfolded}"
    assert not overflow_folded, f"wider than a {WINDOW[0]}-pixel window: {overflow_folded}"
    assert not overflow_open, f"with every module unfolded, wider than a {WINDOW[0]}-pixel window: {overflow_open}"
    errors = [e for e in log if e.get("level") == "SEVERE"]
    assert not errors, f"browser console errors: {errors}"
