"""`make plots` draws with no network: the template in deploy/plots/ inlines vega, vega-lite and vega-embed
(pinned, verbatim, with their licences), and a real headless chromium with every network request refused
draws the ROC curve from the page that the real `dvc plots show --html-template` writes, where dvc's own
page (vega from a CDN) stays blank."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BIN, REPO, project_env

PLOTS = REPO / "deploy" / "plots"
TEMPLATE = PLOTS / "vega-offline.html"
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--host-resolver-rules=MAP * ~NOTFOUND"]  # no name resolves: nothing can come from the network
ROC = [(0.0, 0.0), (0.1, 0.6), (0.3, 0.85), (1.0, 1.0)]
# Keeps the view of every vegaEmbed call (dvc's page calls it without keeping the result)
CAPTURE_VIEWS = """
window.__views = {}; window.__errors = {};
let embed;
Object.defineProperty(window, 'vegaEmbed', {configurable: true, set(v) { embed = v; }, get() {
  return embed && ((el, spec, opt) => embed(el, spec, opt).then(
    r => { window.__views[el] = r.view; return r; }, e => { window.__errors[el] = String(e); throw e; }));
}});
"""
# The ROC plot as drawn: the points of every line mark in vega's scenegraph, the canvas size, and how many
# of its pixels have the colour dvc gives the first revision (#945dd6)
DRAWN = """
() => {
  const lines = [];
  (function walk(node) {
    if (node.marktype === 'line') lines.push(node.items.map(i => [i.x, i.y]));
    (node.items || []).forEach(walk);
  })(window.__views['#ROC'].scenegraph().root);
  const canvas = document.querySelector('#ROC canvas');
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let coloured = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (Math.abs(data[i] - 0x94) < 24 && Math.abs(data[i + 1] - 0x5d) < 24 && Math.abs(data[i + 2] - 0xd6) < 24
        && data[i + 3] > 200) coloured++;
  }
  return {lines, size: [canvas.width, canvas.height], coloured};
}
"""


def vendor():
    spec = importlib.util.spec_from_file_location("plots_vendor", PLOTS / "vendor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_template_inlines_the_pinned_libraries_verbatim_with_their_licences() -> None:
    html = TEMPLATE.read_text(encoding="utf-8")
    scripts = re.findall(r'<script data-package="([^"]+)" data-file="([^"]+)" data-sha256="([0-9a-f]{64})">'
                         r"(.*?)</script>", html, flags=re.S)
    pinned = {f"{name}@{version}": path for name, (version, path) in vendor().PACKAGES.items()}
    assert {package: path for package, path, _, _ in scripts} == pinned
    assert [p.split("@")[0] for p, *_ in scripts] == ["vega", "vega-lite", "vega-embed"]  # load order
    for package, _, digest, code in scripts:
        assert hashlib.sha256(code.encode("utf-8")).hexdigest() == digest, package
        assert len(code) > 50_000, package
        name = package.split("@")[0]
        licence = (PLOTS / f"LICENSE.{name}").read_text()
        assert "University of Washington Interactive Data Lab" in licence and "Redistribution and use" in licence
    # the page's own markup loads nothing from elsewhere; dvc's placeholders: the plots once, its CDN
    # script tags never
    markup = re.sub(r"(<script[^>]*>).*?</script>", r"\1</script>", html, flags=re.S)
    assert markup.count("<script") == 3 and not re.search(r"\s(src|href)=", markup, flags=re.I)
    assert html.count("{plot_divs}") == 1 and "{scripts}" not in html
    assert html.index("</script>") < html.index("{plot_divs}")


def test_make_plots_and_the_readme_use_the_template() -> None:
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile.split("\nplots:", 1)[1].split("\n\n", 1)[0]
    assert "dvc plots show --html-template deploy/plots/vega-offline.html" in recipe
    assert re.search(r"^\.PHONY:.*\bplots\b", makefile, flags=re.M)
    readme = (REPO / "README.md").read_text()
    assert "make plots" in readme and "--html-template deploy/plots/vega-offline.html" in readme


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The project's plot definitions and a small ROC table, rendered by the real `dvc plots show`: once
    with the offline template (what `make plots` runs), once as dvc writes it by default."""
    root = tmp_path_factory.mktemp("plots")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    roc = root / "reports" / "adult" / "evaluation" / "roc.csv"
    roc.parent.mkdir(parents=True)
    roc.write_text("fpr,tpr\n" + "".join(f"{x},{y}\n" for x, y in ROC))
    env = project_env()

    def dvc(*args: str) -> None:
        proc = subprocess.run([str(BIN / "dvc"), *args], cwd=root, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    dvc("init", "--no-scm", "--quiet")
    dvc("plots", "show", "--html-template", str(TEMPLATE), "-o", "offline")
    dvc("plots", "show", "-o", "default")
    return {kind: root / kind / "index.html" for kind in ("offline", "default")}


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM), headless=True,
            args=FLAGS, viewport={"width": 1200, "height": 900}, service_workers="block",
        )  # fmt: skip
        yield context
        context.close()


def open_offline(browser, page_file: Path) -> tuple[object, list[str]]:
    """Open a page with every request that is not the file itself refused; return it and what it asked for."""
    asked: list[str] = []

    def refuse(route) -> None:
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            asked.append(route.request.url)
            route.abort("internetdisconnected")

    page = browser.new_page()
    page.set_default_timeout(30_000)
    page.route("**/*", refuse)
    page.add_init_script(CAPTURE_VIEWS)
    page.goto(page_file.as_uri(), wait_until="load")
    return page, asked


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: run `make browser` (make test does)")
def test_roc_curve_draws_offline_in_a_real_browser(pages: dict[str, Path], browser, tmp_path: Path) -> None:
    page, asked = open_offline(browser, pages["offline"])
    page.wait_for_function("() => window.__views['#ROC'] || window.__errors['#ROC']")
    assert page.evaluate("() => window.__errors['#ROC']") is None
    drawn = page.evaluate(DRAWN)
    page.locator("#ROC").screenshot(path=str(tmp_path / "roc_offline.png"))
    page.close()
    assert asked == []  # nothing was even requested from the network
    assert len(drawn["lines"]) == 1, drawn["lines"]
    points = drawn["lines"][0]
    assert len(points) == len(ROC)
    (x0, y0), (x1, y1) = points[0], points[-1]  # (0, 0) bottom left, (1, 1) top right
    assert x1 - x0 > 200 and y0 - y1 > 200
    for (fpr, tpr), (x, y) in zip(ROC, points):  # every point where the table puts it
        assert (x - x0) / (x1 - x0) == pytest.approx(fpr, abs=0.01)
        assert (y0 - y) / (y0 - y1) == pytest.approx(tpr, abs=0.01)
    width, height = drawn["size"]
    assert width >= 300 and height >= 300
    assert drawn["coloured"] > 100  # the curve is on the canvas, in the first revision's colour


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: run `make browser` (make test does)")
def test_dvc_default_page_stays_blank_offline(pages: dict[str, Path], browser) -> None:
    """The control: the same plots in dvc's own page need the CDN, so without a network nothing draws."""
    page, asked = open_offline(browser, pages["default"])
    page.wait_for_timeout(1500)
    assert any("cdn.jsdelivr.net" in url for url in asked), asked
    assert page.evaluate("() => typeof window.vegaEmbed") == "undefined"
    assert page.locator("#ROC canvas, #ROC svg").count() == 0
    page.close()
