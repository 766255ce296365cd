"""The HTML report: built from real result files, merged across machines, and rendered in a
real browser (headless Chromium through selenium) with every plot drawn and no console error.

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

from reports import build

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "reports" / "data"
PLOTS = ["throughput", "roofline", "drift", "heatmap"]


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


def _conformance_doc(outcome: str) -> dict:
    return {"suite": "gemma4-conformance", "machine": {"label": "m1"},
            "runtimes": {"cpu": {"available": True, "reason": "", "precision": "f32"},
                         "gpu": {"available": False, "reason": "no device", "precision": "f32"}},
            "counts": {}, "tests": {
                "conformance/test_dense.py::test_dense_logits[cpu-12b-like]": {
                    "outcome": outcome, "duration_s": 0.1, "metrics": {"max_abs_dlogit": 0.25},
                    **({"message": "AssertionError: first divergence at layer 3 op attn_out"} if outcome == "failed" else {})},
                "conformance/test_dense.py::test_dense_logits[gpu-12b-like]": {
                    "outcome": "skipped", "duration_s": 0.0, "metrics": {}, "reason": "runtime gpu unavailable: no device"}}}


def test_matrix_shows_failure_and_device_absence(tmp_path):
    (tmp_path / "conformance-x.json").write_text(json.dumps(_conformance_doc("failed")))
    frame = build.conformance_frame(build.load([tmp_path]))
    m = build.matrix(frame)
    assert m["columns"] == ["cpu @ m1"]  # the absent runtime is no column ...
    cell = m["rows"][0]["cells"][0]
    assert m["rows"][0]["test"] == "test_dense.py::test_dense_logits[12b-like]"
    assert cell["outcome"] == "failed" and "0.25" in cell["shown"] and "layer 3" in cell["title"]
    out = tmp_path / "index.html"
    build.build([tmp_path], out)
    html = out.read_text()
    assert 'class="failed"' in html
    assert "gpu @ m1: no device" in html  # ... but listed as not run, with the reason


def test_unknown_files_are_listed_not_used(tmp_path):
    (tmp_path / "other.json").write_text('{"a": 1}')
    (tmp_path / "broken.json").write_text("{")
    res = build.load([tmp_path])
    assert any("other.json" in s for s in res.ignored) and any("broken.json" in s for s in res.ignored)


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
                 "--window-size=1300,1000"):
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
        cells = driver.execute_script("return document.querySelectorAll('#conformance-matrix td.passed').length")
        log = driver.get_log("browser")
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1300, min(height, 16000))
        shot = os.environ.get("G4C_REPORT_SCREENSHOT")
        if shot:
            driver.save_screenshot(shot)
    finally:
        driver.quit()
    assert [s["id"] for s in state] == [f"plot-{p}" for p in PLOTS] and not nodata, (state, nodata)
    bad = [s for s in state if not (s["complete"] and s["w"] > 0 and s["h"] > 0 and s["shown"] > 0)]
    assert not bad, f"plots that did not render: {bad}"
    assert cells > 0, "the conformance matrix shows no passed test"
    errors = [e for e in log if e.get("level") == "SEVERE"]
    assert not errors, f"browser console errors: {errors}"
