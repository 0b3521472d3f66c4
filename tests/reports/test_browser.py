"""report.html in a real browser (headless Chromium): no console errors, every image decodes,
and the screenshot is not blank. Skipped where /usr/bin/chromium is missing (CI installs it)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path(os.environ.get("MSEVAL_CHROMIUM", "/usr/bin/chromium"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--hide-scrollbars", "--disable-extensions"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not found: install the Debian package 'chromium' to run the browser check")

# Appended to a copy of the report: after load, write what the page saw into the DOM, which
# --dump-dom prints. Console errors are also caught from Chromium's own log (--enable-logging).
PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0 && i.naturalHeight > 0); }).length;
  var p = document.createElement('pre'); p.id = 'probe';
  p.textContent = 'PROBE images=' + imgs.length + ' broken=' + broken + ' errors=' + (window.__errors || []).length;
  document.body.appendChild(p);
});
</script>"""
CATCH = "<script>window.__errors=[];window.addEventListener('error',function(e){window.__errors.push(String(e.message||e));},true);" \
        "var _ce=console.error;console.error=function(){window.__errors.push([].join.call(arguments,' '));_ce.apply(console,arguments);};</script>"


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mseval.simulate.forecasters import ForecasterSpec, simulate_forecasts
    from mseval.simulate.model import TrialConfig
    from mseval.simulate.trial import simulate_trial
    from reports.builder import ReportSettings, build_report

    root = tmp_path_factory.mktemp("browser")
    simulate_trial(root / "cohort", TrialConfig(patients_per_arm=3, shape=(32, 38, 32), seed=4, followup_weeks=48))
    simulate_forecasts(root / "cohort", root / "fc", ForecasterSpec("oracle", samples=3, seed=2))
    rep = build_report(root / "cohort", root / "fc", root / "report",
                       settings=ReportSettings(n_boot=20, observed_bootstrap=199, power_sims=2, figure_dpi=50, html_dpi=60, figure_formats=("png",)))
    return rep.html


def _chromium(args: list[str], profile: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)


def test_report_opens_without_errors_or_broken_images(report_html, tmp_path):
    page = tmp_path / "probe.html"
    html = report_html.read_text()
    page.write_text(html.replace("<head>", "<head>" + CATCH, 1).replace("</body>", PROBE + "</body>", 1))
    with tempfile.TemporaryDirectory() as profile:
        res = _chromium(["--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()], profile)
    import re

    probe = re.search(r"PROBE images=(\d+) broken=(\d+) errors=(\d+)", res.stdout)
    assert probe, f"the page did not finish loading: {res.stderr[-2000:]}"
    fields = dict(zip(("images", "broken", "errors"), probe.groups()))
    assert int(fields["images"]) >= 10
    assert int(fields["broken"]) == 0
    assert int(fields["errors"]) == 0
    console = [line for line in res.stderr.splitlines() if "CONSOLE" in line and ("ERROR" in line or "Uncaught" in line)]
    assert console == []
    assert "net::ERR" not in res.stderr  # nothing was fetched from a network


def test_screenshot_is_not_blank(report_html, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    with tempfile.TemporaryDirectory() as profile:
        _chromium([f"--screenshot={shot}", "--window-size=1400,3000", "--virtual-time-budget=5000", report_html.as_uri()], profile)
    assert shot.is_file(), "no screenshot written"
    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape[0] >= 1000
    assert img.std() > 10  # text, tables and figures, not a blank page
    assert (img < 128).mean() > 0.005


WIDTH_PROBE = """<script>
window.addEventListener('load', function () {
  var d = document.documentElement, wide = [];
  Array.prototype.forEach.call(document.querySelectorAll('body *'), function (e) {
    var r = e.getBoundingClientRect();
    if (r.right > window.innerWidth + 1 && !e.closest('.tablebox')) { wide.push(e.tagName + (e.id ? '#' + e.id : '')); }
  });
  var p = document.createElement('pre'); p.id = 'probe';
  p.textContent = 'WIDTH inner=' + window.innerWidth + ' scroll=' + d.scrollWidth + ' wide=' + wide.slice(0, 5).join(',') + ';';
  document.body.appendChild(p);
  if (window.parent !== window) { window.parent.postMessage(p.textContent, '*'); }
});
</script>"""
# Headless Chromium will not open a window narrower than 500 px, so narrower viewports are an
# iframe of that width inside a host page that copies the probe's message into its own DOM.
HOST = """<!DOCTYPE html><html><body style="margin:0">
<iframe src="{src}" width="{width}" height="2400" style="border:0;display:block"></iframe>
<script>window.addEventListener('message', function (e) {{
  var p = document.createElement('pre'); p.textContent = e.data; document.body.appendChild(p); }});</script>
</body></html>"""


@pytest.mark.parametrize("width", [1280, 400])
def test_page_fits_the_viewport_and_screenshots(report_html, tmp_path, width):
    """At 1280 and 400 CSS px the page is no wider than the viewport (wide tables scroll inside
    their own box, figures scale) and the screenshot shows content."""
    import re

    from PIL import Image

    page = tmp_path / "probe.html"
    page.write_text(report_html.read_text().replace("</body>", WIDTH_PROBE + "</body>", 1))
    host = tmp_path / "host.html"
    host.write_text(HOST.format(src=page.name, width=width))
    window = max(width, 500)
    with tempfile.TemporaryDirectory() as profile:
        res = _chromium([f"--window-size={window},900", "--virtual-time-budget=8000", "--dump-dom", host.as_uri()], profile)
    m = re.search(r"WIDTH inner=(\d+) scroll=(\d+) wide=([^;]*);", res.stdout)
    assert m, f"the page did not finish loading: {res.stderr[-2000:]}"
    inner, scroll, wide = int(m.group(1)), int(m.group(2)), m.group(3)
    assert inner == width
    assert scroll <= inner, f"page is {scroll} px wide in a {inner} px viewport; too wide: {wide}"
    assert wide == ""
    shot = tmp_path / f"shot_{width}.png"
    host.write_text(HOST.format(src=report_html.as_uri(), width=width))
    with tempfile.TemporaryDirectory() as profile:
        _chromium([f"--screenshot={shot}", f"--window-size={window},2400", "--virtual-time-budget=5000", host.as_uri()], profile)
    img = np.asarray(Image.open(shot).convert("L"), dtype=float)[:, :width]
    assert img.shape[1] == width and img.std() > 10
    out = os.environ.get("MSEVAL_SCREENSHOTS")  # keep the screenshots for a person to look at
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        Image.open(shot).crop((0, 0, width, 2400)).save(Path(out) / f"report_{width}px.png")


LAYOUT_PROBE = """<script>
window.addEventListener('load', function () {
  setTimeout(function () {
    var prim = document.querySelector('#primary-table');
    var top = prim ? Math.round(prim.getBoundingClientRect().top + window.scrollY) : -1;
    var box = prim ? prim.closest('.tablebox') : null;
    var over = box ? box.scrollWidth - box.clientWidth : -1;
    var blind = [];
    Array.prototype.forEach.call(document.querySelectorAll('.tablebox'), function (b, i) {
      if (b.scrollWidth > b.clientWidth + 1) {
        var cue = b.parentElement.querySelector('.scrollcue');
        if (!cue || cue.offsetHeight === 0 || getComputedStyle(cue).visibility === 'hidden') { blind.push(i); }
      }
    });
    var p = document.createElement('pre'); p.id = 'probe';
    p.textContent = 'LAYOUT top=' + top + ' over=' + over + ' scroll=' + document.documentElement.scrollWidth +
                    ' inner=' + window.innerWidth + ' blind=' + blind.join(',') + ';';
    document.body.appendChild(p);
    if (window.parent !== window) { window.parent.postMessage(p.textContent, '*'); }
  }, 50);
});
</script>"""


def _layout(report_html: Path, tmp_path: Path, width: int) -> dict[str, str]:
    """The LAYOUT_PROBE's measurements of the report in a `width`-px viewport (an iframe below 500 px)."""
    import re

    page = tmp_path / f"layout_{width}.html"
    page.write_text(report_html.read_text().replace("</body>", LAYOUT_PROBE + "</body>", 1))
    host = tmp_path / f"layout_host_{width}.html"
    host.write_text(HOST.format(src=page.name, width=width))
    with tempfile.TemporaryDirectory() as profile:
        res = _chromium([f"--window-size={max(width, 500)},900", "--virtual-time-budget=8000", "--dump-dom", host.as_uri()], profile)
    m = re.search(r"LAYOUT top=(-?\d+) over=(-?\d+) scroll=(\d+) inner=(\d+) blind=([^;]*);", res.stdout)
    assert m, f"the page did not finish loading: {res.stderr[-2000:]}"
    return dict(zip(("top", "over", "scroll", "inner", "blind"), m.groups()))


def test_primary_table_is_on_the_first_screen_and_fits_at_1280px(report_html, tmp_path):
    """At a 1280 px window the primary endpoint table starts within the first 1,500 px and its
    box does not scroll sideways (every column visible)."""
    lay = _layout(report_html, tmp_path, 1280)
    assert int(lay["inner"]) == 1280
    assert 0 <= int(lay["top"]) <= 1500, lay
    assert int(lay["over"]) <= 0, f"the primary table is {lay['over']} px wider than its box"


def test_tables_that_scroll_at_400px_show_a_cue(report_html, tmp_path):
    """At 400 px the document is no wider than the viewport; every table box that scrolls sideways
    shows a visible cue saying so (blind = indexes of scrolling boxes without one)."""
    lay = _layout(report_html, tmp_path, 400)
    assert int(lay["inner"]) == 400
    assert int(lay["scroll"]) <= 400
    assert int(lay["over"]) > 0  # the probe sees a scrolling table here, so the cue check is not vacuous
    assert lay["blind"] == "", f"table boxes {lay['blind']} scroll without a cue"
