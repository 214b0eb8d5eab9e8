"""The app in a real browser: Streamlit as a subprocess, Debian's Chromium driven by Playwright, one user walk.

Home → demo → Train a short linear probe → close the tab mid-run and come back in a new session → switch pages
while it trains (timed) → Evaluate → click a confusion-matrix cell → Explain an image of it → Predict on an
uploaded PNG → Runs; and a multi-label walk: the multi-label demo → a linear probe with tuned thresholds → Evaluate
(mAP, a label's gallery) → Explain that image for that label → Predict two scenes. Prints one `FIGURES ...` line
(seconds to a healthy server, to the first painted page, and per page switch). `SAVE_SCREENSHOTS=1` writes the
screenshots to docs/screenshots/ (otherwise to pytest's tmp dir, so a test run leaves the repo clean).
"""

from __future__ import annotations

import io
import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from live_app import ROOT, Server, require_chromium, streamlit_app
from PIL import Image, ImageDraw

pytestmark = [pytest.mark.browser, pytest.mark.slow]

require_chromium()
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="browser tests need Playwright for Python (pip install playwright)"
)
expect = sync_api.expect

VIEWPORT = {"width": 1400, "height": 900}
DEMO_CLASSES = ("circle", "square", "triangle", "star", "cross")
RUN_NAME = "browser-demo"
SLOW_MS = 120_000  # first render of a page imports torch/timm on a shared 2-core machine
STEP_MS = 30_000


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`streamlit run app.py` on a free loopback port with a fresh workspace; killed (process group) at the end."""
    with streamlit_app(tmp_path_factory.mktemp("browser")) as srv:
        print(f"\nstreamlit healthy after {srv.healthy_s:.1f} s at {srv.url}")
        yield srv


@pytest.fixture
def shots_dir(tmp_path: Path) -> Path:
    if os.environ.get("SAVE_SCREENSHOTS") == "1":
        out = ROOT / "docs" / "screenshots"
        out.mkdir(parents=True, exist_ok=True)
        return out
    return tmp_path


# ---------------------------------------------------------------------------------------------------- helpers


def heading(page: sync_api.Page, title: str) -> sync_api.Locator:
    return page.get_by_role("heading", level=1, name=title, exact=True)


def nav_link(page: sync_api.Page, url: str, slug: str) -> sync_api.Locator:
    return page.locator(f'a[data-testid="stSidebarNavLink"][href="{url}/{slug}"]')


def field(page: sync_api.Page, label: str) -> sync_api.Locator:
    """The input labelled `label` in its current rendering (a rerun keeps the old one, greyed out, until it ends)."""
    current = '[data-testid="stElementContainer"][data-stale="false"] > [data-testid]'
    return page.locator(f'{current} input[aria-label="{label}"]')


def rerun_over(page: sync_api.Page) -> None:
    """Wait until the app has no rerun in flight: nothing on the page is stale and the running indicator is gone."""
    page.wait_for_timeout(300)  # the rerun starts after the click's message reaches the server
    page.wait_for_function(
        """() => !document.querySelector('[data-stale="true"]')
                 && !document.querySelector('[data-testid="stStatusWidget"] button')""",
        timeout=STEP_MS,
    )


def assert_clean(page: sync_api.Page) -> None:
    """No Streamlit exception box and no error alert on the page."""
    expect(page.locator('[data-testid="stException"]')).to_have_count(0)
    errors = page.locator('[data-testid="stAlertContentError"]')
    assert errors.count() == 0, errors.all_inner_texts()


def choose(page: sync_api.Page, label: str, option: str) -> None:
    """Pick `option` in the selectbox `label`. A click that lands while charts above it still lay out focuses the
    box without opening its list (seen on the multi-label Evaluate page), so the list is opened again until it shows."""
    box = page.get_by_role("combobox", name=label, exact=True)
    item = page.get_by_role("option", name=option, exact=True)
    for _ in range(4):
        box.click()
        try:
            item.wait_for(timeout=3000)
            break
        except sync_api.TimeoutError:
            page.keyboard.press("Escape")
    item.click()
    expect(box).to_have_value(option)


def switch_to(page: sync_api.Page, url: str, slug: str, title: str) -> float:
    """Click the sidebar link and wait for the page's title; seconds taken."""
    start = time.monotonic()
    nav_link(page, url, slug).click()
    heading(page, title).wait_for(timeout=STEP_MS)
    return time.monotonic() - start


def run_line(page: sync_api.Page) -> sync_api.Locator:
    """The Train page's '**name** — icon status' line of the followed run."""
    return page.locator('[data-testid="stMarkdownContainer"] p', has_text=f"{RUN_NAME} —")


SHOWN_JS = """(name) => {
    const line = Array.from(document.querySelectorAll('[data-testid="stMarkdownContainer"] p'))
        .find(p => p.innerText.includes(name + ' —'));
    const bar = document.querySelector('[data-testid="stProgress"]');
    const pct = bar ? bar.querySelector('[role=progressbar]').getAttribute('aria-valuenow') : null;
    return [line ? line.innerText : '', bar ? bar.innerText.trim() + ' @ ' + pct + '%' : ''];
}"""


def progress(page: sync_api.Page) -> tuple[str, str]:
    """(status line, progress bar text and percent) of the followed run, as the page shows them."""
    line, bar = page.evaluate(SHOWN_JS, RUN_NAME)
    return line, bar


def settle(page: sync_api.Page) -> None:
    """Let charts draw and images load before a screenshot."""
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete)", timeout=STEP_MS)
    charts = page.locator('[data-testid="stPlotlyChart"]')
    for i in range(charts.count()):
        if charts.nth(i).is_visible():
            charts.nth(i).locator(".main-svg").first.wait_for(timeout=STEP_MS)
    page.wait_for_timeout(1000)


def shoot(page: sync_api.Page, path: Path) -> None:
    """Whole page: Streamlit scrolls inside stMain, so grow the viewport to its content height for the shot."""
    settle(page)
    page.evaluate("() => document.activeElement && document.activeElement.blur()")  # no focus ring in the shot
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": max(VIEWPORT["height"], min(int(height), 6000))})
    page.wait_for_timeout(1500)  # charts re-layout to the new size
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(VIEWPORT)
    assert path.stat().st_size > 10_000, f"{path} looks empty"


def star_png(size: int = 128) -> bytes:
    """A yellow five-point star on a noisy grey background, like the demo images."""
    image = Image.effect_noise((size, size), 40).convert("RGB")
    c, r_out, r_in = size / 2, size * 0.38, size * 0.16
    points = [
        (c + (r_out if k % 2 == 0 else r_in) * math.sin(k * math.pi / 5),
         c - (r_out if k % 2 == 0 else r_in) * math.cos(k * math.pi / 5))
        for k in range(10)
    ]  # fmt: skip
    ImageDraw.Draw(image).polygon(points, fill=(235, 200, 30))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------- the walk


def test_user_walks_through_the_app(server: Server, browser: sync_api.Browser, shots_dir: Path) -> None:
    url = server.url

    # 1. Home, first paint, the demo button lands on Train with the demo dataset chosen.
    first = browser.new_context(viewport=VIEWPORT)
    page = first.new_page()
    start = time.monotonic()
    page.goto(f"{url}/")
    heading(page, "Image classifier workbench").wait_for(timeout=SLOW_MS)
    first_paint_s = time.monotonic() - start
    print(f"first page painted after {first_paint_s:.1f} s")
    expect(page.get_by_text("No runs yet.")).to_be_visible(timeout=STEP_MS)
    assert_clean(page)
    page.get_by_role("button", name="Try it on the demo dataset").click()
    heading(page, "Train").wait_for(timeout=SLOW_MS)
    expect(page).to_have_url(re.compile(rf"^{re.escape(url)}/train(\?.*)?$"))  # the URL carries ?dataset=...
    expect(page.get_by_role("combobox", name="Dataset", exact=True)).to_have_value(
        "Built-in demo dataset (shapes)", timeout=STEP_MS
    )
    assert_clean(page)

    # 2. A short linear probe on EfficientNet-Lite0 (bundled weights, offline).
    expect(page.get_by_role("combobox", name="Backbone", exact=True)).to_have_value("efficientnet_lite0")
    expect(page.get_by_text("Pretrained weights offline: yes")).to_be_visible()
    expect(page.get_by_role("combobox", name="Weights", exact=True)).to_have_value("ImageNet, bundled (offline)")
    page.locator('[data-testid="stRadioOption"]', has_text="Linear probe").click()
    expect(page.locator('[data-testid="stRadioOption"][data-selected="true"]')).to_have_text(re.compile("Linear probe"))
    expect(field(page, "Epochs")).to_have_value("20", timeout=STEP_MS)  # a widget per mode; 20: the linear default
    rerun_over(page)  # a value typed while the mode's rerun replaces the fields would be lost or cut short
    for label, value in (("Epochs", "8"), ("Image size", "128"), ("Run name (optional)", RUN_NAME)):
        box = field(page, label)
        box.fill(value)
        box.press("Enter")
        expect(box).to_have_value(value)
        rerun_over(page)
    page.get_by_role("button", name="Start training").click()
    expect(page.locator('[data-testid="stProgress"]')).to_be_visible(timeout=STEP_MS)
    expect(run_line(page)).to_contain_text("running", timeout=60_000)
    assert_clean(page)
    before = progress(page)
    print(f"first session sees: {before}")

    # Close the tab mid-run; a new browser context is a new Streamlit session.
    first.close()
    second = browser.new_context(viewport=VIEWPORT)
    page = second.new_page()
    page.goto(f"{url}/train")
    heading(page, "Train").wait_for(timeout=SLOW_MS)
    expect(run_line(page)).to_contain_text(re.compile("running|completed"), timeout=STEP_MS)
    assert_clean(page)
    # The new session polls on its own: its progress bar moves on (or the run has finished meanwhile).
    seen: list[str] = []
    line, deadline = "", time.monotonic() + 90
    while time.monotonic() < deadline:
        line, bar = progress(page)
        if "completed" in line:
            break
        if bar and (not seen or seen[-1] != bar):
            seen.append(bar)
        if len(seen) >= 2 and seen[-1] != before[1]:
            break
        page.wait_for_timeout(300)
    print(f"second session sees: {line!r}, progress {seen}")
    assert "completed" in line or (len(seen) >= 2 and seen[-1] != before[1]), (line, seen)

    # 3. Page switches while the run trains.
    switches: dict[str, float] = {}
    running_during = "running" in run_line(page).first.inner_text()
    for slug, title in (("data", "Data"), ("evaluate", "Evaluate"), ("train", "Train")):
        switches[title] = switch_to(page, url, slug, title)
        assert_clean(page)
    expect(run_line(page)).to_be_visible(timeout=STEP_MS)
    running_during = running_during and "running" in run_line(page).first.inner_text()
    print(f"page switches (run still running throughout: {running_during}): {switches}")

    # Wait for the run to finish: metric cards replace the progress bar.
    expect(run_line(page)).to_contain_text("completed", timeout=180_000)
    expect(page.locator('[data-testid="stProgress"]')).to_have_count(0, timeout=STEP_MS)
    expect(page.locator('[data-testid="stMetricLabel"]', has_text="Accuracy")).to_be_visible(timeout=STEP_MS)
    expect(page.locator('[data-testid="stPlotlyChart"] .js-plotly-plot')).to_have_count(1, timeout=STEP_MS)
    assert_clean(page)
    shoot(page, shots_dir / "train.png")

    # 4. Evaluate: pick the run; headline metrics and Plotly charts.
    switch_to(page, url, "evaluate", "Evaluate")
    picker = page.get_by_role("combobox", name="Completed run or saved ensemble", exact=True)
    picker.click()
    page.get_by_role("option", name=re.compile(RUN_NAME)).click()
    expect(picker).to_have_value(re.compile(rf"^{RUN_NAME} · efficientnet_lite0 · acc \d+\.\d%"))
    accuracy = page.locator('[data-testid="stMetric"]', has_text="Accuracy").locator('[data-testid="stMetricValue"]')
    expect(accuracy).to_have_text(re.compile(r"^\d+\.\d%$"), timeout=STEP_MS)
    for label in ("Macro F1", "ROC AUC", "ECE"):
        expect(page.locator('[data-testid="stMetricLabel"]', has_text=label)).to_be_visible()
    expect(page.get_by_text("60 validation images · 5 classes")).to_be_visible()
    expect(page.locator('[data-testid="stPlotlyChart"] .js-plotly-plot').first).to_be_visible(timeout=STEP_MS)
    assert page.locator('[data-testid="stPlotlyChart"]').count() >= 3  # confusion matrix, per class, curves
    assert_clean(page)
    shoot(page, shots_dir / "evaluate.png")

    # 4b. The error-analysis loop: click a confusion-matrix cell -> its images, worst first -> Explain one.
    cm = page.locator('[data-testid="stPlotlyChart"]').first
    cm.scroll_into_view_if_needed()
    area = cm.locator(".nsewdrag").first.bounding_box()  # the plot area (cells), y reversed: row 0 on top
    n, row, col = len(DEMO_CLASSES), 0, 0  # true circle, predicted circle: the diagonal always has images
    start = time.monotonic()
    page.mouse.click(area["x"] + (col + 0.5) * area["width"] / n, area["y"] + (row + 0.5) * area["height"] / n)
    expect(page.get_by_role("combobox", name="True class", exact=True)).to_have_value("circle", timeout=STEP_MS)
    expect(page.get_by_role("combobox", name="Predicted class", exact=True)).to_have_value("circle")
    gallery = page.locator('[data-testid="stCaptionContainer"]', has_text="true circle · predicted circle")
    expect(gallery.first).to_be_visible(timeout=STEP_MS)
    cell_s = time.monotonic() - start
    first_path = gallery.first.locator("code").inner_text()
    assert_clean(page)
    page.get_by_role("button", name="Explain").first.click()
    heading(page, "Explain").wait_for(timeout=STEP_MS)
    expect(page).to_have_url(re.compile(rf"^{re.escape(url)}/explain(\?.*)?$"))
    expect(page.get_by_role("combobox", name=re.compile(r"^Validation image"))).to_have_value(
        re.compile("^" + re.escape(first_path))
    )
    start = time.monotonic()
    for method in ("Grad-CAM", "Integrated gradients", "Saliency"):  # the default methods, each with its time
        expect(page.locator('[data-testid="stCaptionContainer"]', has_text=re.compile(rf"^{method} · \d+\.\d+ s"))
               ).to_be_visible(timeout=SLOW_MS)  # fmt: skip
    explain_s = time.monotonic() - start
    expect(page.get_by_role("button", name="PNG")).to_have_count(3)
    assert_clean(page)
    print(f"confusion-matrix click to gallery {cell_s:.1f} s; three attribution maps shown after {explain_s:.1f} s")
    shoot(page, shots_dir / "explain.png")

    # 5. Predict: upload a generated PNG; a demo class comes back with its probability.
    switch_to(page, url, "predict", "Predict")
    picker = page.get_by_role("combobox", name="Model (a completed run or a saved ensemble)", exact=True)
    expect(picker).to_have_value(re.compile(RUN_NAME))
    expect(page.get_by_text(f"5 classes: {', '.join(sorted(DEMO_CLASSES))}.")).to_be_visible(timeout=STEP_MS)
    page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(
        files=[{"name": "my-star.png", "mimeType": "image/png", "buffer": star_png()}]
    )
    verdict = page.locator('[data-testid="stMarkdownContainer"] p').filter(
        has_text=re.compile(rf"^({'|'.join(DEMO_CLASSES)}) — \d+\.\d%$")
    )
    expect(verdict).to_have_count(1, timeout=60_000)
    print(f"prediction for my-star.png: {verdict.inner_text()}")
    expect(page.get_by_text("my-star.png").last).to_be_visible()
    expect(page.locator('[data-testid="stPlotlyChart"] .js-plotly-plot')).to_have_count(1, timeout=STEP_MS)
    assert_clean(page)
    shoot(page, shots_dir / "predict.png")

    # 6. Runs, Data (the demo dataset picked from the workspace) and Home, for the record.
    switch_to(page, url, "runs", "Runs")
    expect(page.locator('[data-testid="stDataFrame"]')).to_be_visible()
    expect(page.get_by_role("combobox", name="Run", exact=True)).to_have_value(re.compile(RUN_NAME))
    expect(page.get_by_role("button", name="Download run (.zip)")).to_be_visible()
    assert_clean(page)
    shoot(page, shots_dir / "runs.png")

    switch_to(page, url, "data", "Data")
    chooser = page.get_by_role("combobox", name="Datasets saved in the workspace")
    chooser.click()
    page.get_by_role("option", name="demo-seed0").click()
    expect(page.get_by_role("heading", name="Dataset: demo-seed0")).to_be_visible(timeout=SLOW_MS)
    images = page.locator('[data-testid="stMetric"]', has_text="Images").locator('[data-testid="stMetricValue"]')
    expect(images).to_have_text("300", timeout=STEP_MS)
    expect(page.get_by_role("heading", name="Augmentation preview")).to_be_visible(timeout=STEP_MS)
    assert_clean(page)
    shoot(page, shots_dir / "data.png")

    nav_link(page, url, "").click()
    heading(page, "Image classifier workbench").wait_for(timeout=STEP_MS)
    expect(page.locator('[data-testid="stDataFrame"]')).to_be_visible(timeout=STEP_MS)
    assert_clean(page)
    shoot(page, shots_dir / "home.png")
    second.close()

    switch_s = [round(s, 2) for s in switches.values()]
    print(
        f"FIGURES healthy_s={server.healthy_s:.1f} first_paint_s={first_paint_s:.1f} switch_s={switch_s} "
        f"(Data, Evaluate, Train while training: {running_during})"
    )
    assert max(switch_s) < 5.0, f"page switches too slow: {switches}"  # target < 2 s; slack for a loaded CI box


def shapes_zip() -> bytes:
    """Two classes of generated photos-like images, zipped the way users upload them (one folder per class)."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for cls, color in (("ants", (120, 60, 20)), ("bees", (230, 190, 40))):
            for i in range(6):
                image = Image.effect_noise((64, 64), 30 + i).convert("RGB")
                ImageDraw.Draw(image).ellipse((12 + i, 16, 44 + i, 40), fill=color)
                data = io.BytesIO()
                image.save(data, "PNG")
                zf.writestr(f"insects/{cls}/{cls}_{i}.png", data.getvalue())
    return buf.getvalue()


def test_settings_stay_through_page_switches_and_a_reload(server: Server, browser: sync_api.Browser) -> None:
    """Upload a zip, set non-default Train settings, switch pages, reload the tab: every field keeps its value, the
    URL carries the dataset, and a backbone whose hub weights are not on this offline machine cannot be started."""
    url = server.url
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.goto(f"{url}/data")
    heading(page, "Data").wait_for(timeout=SLOW_MS)
    page.locator('[data-testid="stRadioOption"]', has_text="Upload a .zip").click()
    page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(
        files=[{"name": "insects.zip", "mimeType": "application/zip", "buffer": shapes_zip()}]
    )
    expect(page.get_by_role("heading", name=re.compile(r"^Dataset: insects-"))).to_be_visible(timeout=SLOW_MS)
    dataset = page.get_by_role("heading", name=re.compile(r"^Dataset: insects-")).inner_text().split(": ", 1)[1]
    assert_clean(page)

    switch_to(page, url, "train", "Train")
    expect(page.get_by_role("combobox", name="Dataset", exact=True)).to_have_value(dataset, timeout=STEP_MS)
    page.locator('[data-testid="stRadioOption"]', has_text="Linear probe").click()
    # The mode has fields of its own (Epochs: 20 for a linear probe): fill them once the rerun it starts has ended,
    # or a value typed into the fine-tune field is replaced by the linear probe's (seen: 20 where 5 was typed).
    expect(page.locator('[data-testid="stRadioOption"][data-selected="true"]')).to_have_text(
        re.compile("Linear probe"), timeout=STEP_MS
    )
    rerun_over(page)
    wanted = {"Epochs": "5", "Learning rate": "0.010000", "Image size": "96", "Run name (optional)": "kept-run"}
    for label, value in wanted.items():
        box = field(page, label)
        box.fill(value)
        box.press("Enter")
        expect(box).to_have_value(value, timeout=STEP_MS)
        rerun_over(page)

    def check_fields() -> None:
        expect(page.get_by_role("combobox", name="Dataset", exact=True)).to_have_value(dataset, timeout=STEP_MS)
        expect(page.locator('[data-testid="stRadioOption"][data-selected="true"]')).to_have_text(
            re.compile("Linear probe"), timeout=STEP_MS
        )
        for label, value in wanted.items():
            expect(field(page, label)).to_have_value(value, timeout=STEP_MS)

    for slug, title in (("data", "Data"), ("evaluate", "Evaluate"), ("runs", "Runs"), ("train", "Train")):
        switch_to(page, url, slug, title)
        assert_clean(page)
    check_fields()
    page.reload()
    heading(page, "Train").wait_for(timeout=SLOW_MS)
    check_fields()
    # the app writes the query string as its run ends, which may be after the fields are back
    expect(page).to_have_url(re.compile(rf"[?&]dataset={re.escape(dataset)}(&|$)"), timeout=STEP_MS)

    # resnet18's ImageNet weights are not cached here and the Hub cannot be reached (no internet on this machine):
    # the weight source starts on one that works; choosing the Hub marks the field and keeps Start off.
    backbone = page.get_by_role("combobox", name="Backbone", exact=True)
    backbone.click()
    page.get_by_role("option", name="resnet18", exact=True).click()
    weights = page.get_by_role("combobox", name="Weights", exact=True)
    expect(weights).to_have_value("None (train from scratch)", timeout=STEP_MS)
    weights.click()
    page.get_by_role("option", name="ImageNet from the Hugging Face Hub").click()
    expect(page.locator('[data-testid="stAlertContentWarning"]', has_text="cannot be reached")).to_be_visible(
        timeout=STEP_MS
    )
    rerun_over(page)  # the warning can show while the rerun still holds the old Start button beside the new one
    expect(page.get_by_role("button", name="Start training")).to_be_disabled()
    page.get_by_role("button", name=re.compile("^Use weights none")).click()
    expect(weights).to_have_value("None (train from scratch)", timeout=STEP_MS)
    rerun_over(page)
    expect(page.get_by_role("button", name="Start training")).to_be_enabled()
    assert_clean(page)
    context.close()


def scene_png(shapes: tuple[str, ...], seed: int) -> bytes:
    """A multi-label demo scene with these shapes, as the multi-label demo draws them (192 px)."""
    import numpy as np

    from classifier.data.demo import demo_scene

    image, _ = demo_scene(list(shapes), np.random.default_rng(seed), 192)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def test_multilabel_run_through_evaluate_explain_and_predict(server: Server, browser: sync_api.Browser) -> None:
    """The multi-label demo from the Data page, a linear probe with tuned thresholds, then Evaluate (mAP, the per-label
    table, a label's false positives or negatives) → Explain that image for that label → Predict two scenes (labels
    above their thresholds, per-label bars, the CSV)."""
    url, name = server.url, "browser-multilabel"
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.goto(f"{url}/data")
    heading(page, "Data").wait_for(timeout=SLOW_MS)
    page.locator('[data-testid="stRadioOption"]', has_text="Demo dataset").click()
    page.get_by_role("button", name="Use the multi-label demo").click()
    expect(page.get_by_role("heading", name="Dataset: demo-multilabel-seed0")).to_be_visible(timeout=SLOW_MS)
    labels = page.locator('[data-testid="stMetric"]', has_text="Labels (multi-label)")
    expect(labels).to_contain_text("5", timeout=STEP_MS)  # the heading comes first; the index of 400 scenes after
    expect(page.get_by_text(re.compile(r"labels per image on average; 0 images have no label"))).to_be_visible(
        timeout=STEP_MS
    )
    assert_clean(page)

    switch_to(page, url, "train", "Train")
    expect(page.get_by_role("combobox", name="Dataset", exact=True)).to_have_value("demo-multilabel-seed0")
    # Backbone and weights set, not assumed: the Train page keeps the last settings used in this workspace
    choose(page, "Backbone", "efficientnet_lite0")
    rerun_over(page)
    expect(page.get_by_role("combobox", name="Weights", exact=True)).to_have_value("ImageNet, bundled (offline)")
    page.locator('[data-testid="stRadioOption"]', has_text="Linear probe").click()
    rerun_over(page)  # a click during the mode's rerun can land on a field that is about to be replaced
    tune = page.locator('[data-testid="stCheckbox"]', has_text="Tune thresholds")
    if not tune.locator("input").is_checked():  # the page may keep it from an earlier walk in this workspace
        tune.click()
    expect(tune.locator("input")).to_be_checked(timeout=STEP_MS)
    rerun_over(page)
    # Epochs set, not assumed: the Train page keeps the last settings used in this workspace (the walks above)
    for label, value in (("Epochs", "20"), ("Image size", "128"), ("Run name (optional)", name)):
        box = field(page, label)
        box.fill(value)
        box.press("Enter")
        expect(box).to_have_value(value)
        rerun_over(page)
    page.get_by_role("button", name="Start training").click()
    line = page.locator('[data-testid="stMarkdownContainer"] p', has_text=f"{name} —")
    expect(line).to_contain_text("completed", timeout=240_000)
    assert_clean(page)
    evaluate_then_explain(page, url, name, "efficientnet_lite0")
    predict_scenes(page, url, name)
    context.close()


def evaluate_then_explain(page: sync_api.Page, url: str, name: str, backbone: str) -> None:
    """Evaluate the multi-label run `name` (headline metrics, thresholds tuned, the gallery of every image of a
    label), then Explain its first gallery image for that label."""
    switch_to(page, url, "evaluate", "Evaluate")
    picker = page.get_by_role("combobox", name="Completed run or saved ensemble", exact=True)
    picker.click()
    page.get_by_role("option", name=re.compile(name)).click()
    expect(picker).to_have_value(re.compile(rf"^{name} · {backbone} · mAP \d\.\d{{3}}"))
    mean_ap = page.locator('[data-testid="stMetric"]', has_text="mAP").locator('[data-testid="stMetricValue"]')
    expect(mean_ap).to_have_text(re.compile(r"^0\.\d{3}$|^1\.000$"), timeout=STEP_MS)
    print(f"multi-label linear probe mAP in the browser: {mean_ap.inner_text()}")
    for label in ("Micro F1", "Subset accuracy", "Hamming loss"):
        expect(page.locator('[data-testid="stMetricLabel"]', has_text=label)).to_be_visible()
    expect(page.get_by_text(re.compile(r"5 labels \(multi-label: any number per image\) · thresholds tuned"))
           ).to_be_visible()  # fmt: skip
    choose(page, "Images", "all")
    rerun_over(page)  # the gallery read below must be the one its Explain buttons belong to
    gallery = page.locator('[data-testid="stCaptionContainer"]', has_text=re.compile(r"^p\(.* · threshold "))
    expect(gallery.first).to_be_visible(timeout=STEP_MS)
    first_path = gallery.first.locator("code").inner_text()
    label = page.get_by_role("combobox", name="Label", exact=True).input_value()
    assert_clean(page)
    page.get_by_role("button", name="Explain").first.click()
    heading(page, "Explain").wait_for(timeout=STEP_MS)
    expect(page.get_by_role("combobox", name=re.compile(r"^Validation image"))).to_have_value(
        re.compile("^" + re.escape(first_path))
    )
    target = page.get_by_role("combobox", name="Explain the score of", exact=True)
    expect(target).to_have_value(re.compile(rf"^label {label} \("))
    for method in ("Grad-CAM", "Integrated gradients", "Saliency"):
        expect(page.locator('[data-testid="stCaptionContainer"]', has_text=re.compile(rf"^{method} · \d+\.\d+ s"))
               ).to_be_visible(timeout=SLOW_MS)  # fmt: skip
    expect(page.get_by_text(re.compile(r"^Labels predicted: "))).to_be_visible()
    assert_clean(page)


def predict_scenes(page: sync_api.Page, url: str, name: str) -> None:
    """Predict two uploaded scenes with the run `name`: labels above their thresholds, per-label bars, the CSV."""
    switch_to(page, url, "predict", "Predict")
    picker = page.get_by_role("combobox", name="Model (a completed run or a saved ensemble)", exact=True)
    expect(picker).to_have_value(re.compile(name), timeout=STEP_MS)
    expect(page.get_by_text(re.compile(r"^5 labels \(multi-label"))).to_be_visible(timeout=STEP_MS)
    page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(
        files=[{"name": "two.png", "mimeType": "image/png", "buffer": scene_png(("circle", "star"), 1)},
               {"name": "one.png", "mimeType": "image/png", "buffer": scene_png(("cross",), 2)}]
    )  # fmt: skip
    expect(page.get_by_role("button", name="Download predictions (CSV)")).to_be_visible(timeout=60_000)
    expect(page.locator('[data-testid="stPlotlyChart"] .js-plotly-plot')).to_have_count(2, timeout=STEP_MS)
    found = page.locator('[data-testid="stMarkdownContainer"] p').filter(
        has_text=re.compile(r"^(no label above its threshold|(circle|cross|square|star|triangle) \d+\.\d%)")
    )
    expect(found).to_have_count(2, timeout=STEP_MS)
    print(f"predicted for two.png (circle, star) and one.png (cross): {found.all_inner_texts()}")
    assert_clean(page)
