"""Load on loopback: four browser sessions use every page while a run trains, then twenty upload/clear cycles.

Streamlit runs as a subprocess with a fresh workspace; a small `simple_cnn` run is submitted to the same workspace's
job executor and trains in its own process throughout. Four headless Chromium contexts (four Streamlit sessions)
then each visit every page of app.py's navigation in turn (Home, Data, Train, Search, Evaluate, Compare, Explain,
Predict, Runs), at the same time. Every page must show its title within `PAGE_BOUND_S` and no exception box.
Afterwards one session uploads a small generated zip on the Data page and removes it again, twenty times, and the
server's resident memory must grow by less than `MEMORY_BOUND_MB`. Prints `FIGURES ...` lines (longest page
response, server RSS before/after) for the report.
"""

from __future__ import annotations

import asyncio
import io
import re
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from live_app import CHROMIUM, CHROMIUM_ARGS, ROOT, Server, require_chromium, run_in_fresh_thread, streamlit_app
from PIL import Image

pytestmark = [pytest.mark.browser, pytest.mark.slow]

require_chromium()
async_api = pytest.importorskip(
    "playwright.async_api", reason="browser tests need Playwright for Python (pip install playwright)"
)


def app_pages() -> list[tuple[str, str]]:
    """(URL slug, page title) of every page the navigation gives a local user (no sign-in: every page but Access),
    in its order; the default page's slug is ""."""
    from ui.access import HOME, SECTIONS

    files = [HOME[0]] + [f for pages in SECTIONS.values() for f, _, _, can in pages if can != "access_list"]
    pages = []
    for path in files:
        title = re.search(r'st\.title\("([^"]+)"\)', (ROOT / path).read_text(encoding="utf-8")).group(1)
        pages.append(("" if path == HOME[0] else Path(path).stem, title))
    return pages


PAGES = app_pages()
SESSIONS = 4
PAGE_BOUND_S = 45.0  # per page, four sessions at once while a run trains on a shared 2-core machine
FIRST_PAGE_BOUND_S = 120.0  # the first page a server renders imports torch and timm
UPLOAD_CYCLES = 20
MEMORY_BOUND_MB = 150.0


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (psutil when installed, else /proc/<pid>/status)."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 1024**2
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for process {pid}") from None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with streamlit_app(tmp_path) as srv:
        yield srv


@pytest.fixture
def training(server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple]:
    """A small run submitted to the server's workspace, running before the browsers start; cancelled at the end."""
    from classifier import jobs
    from classifier.data.demo import make_demo_dataset
    from classifier.training import TrainConfig

    monkeypatch.setenv("CLASSIFIER_WORKSPACE", str(server.workspace))
    from classifier.workspace import datasets_dir

    data = make_demo_dataset(datasets_dir() / "load-shapes", n_per_class=16, size=48, seed=5)
    ex = jobs.LocalProcessExecutor()
    cfg = TrainConfig(data=str(data), backbone="simple_cnn", weights="none", img_size=32, epochs=500, batch_size=8,
                      num_workers=0, device="cpu", seed=0)  # fmt: skip
    run_id = ex.submit(cfg, name="load-run")
    deadline = time.monotonic() + 120
    while ex.status(run_id).status != "running" or not ex.status(run_id).progress.get("step"):
        assert ex.status(run_id).status in ("queued", "running"), (ex.status(run_id), jobs.log_path(run_id))
        assert time.monotonic() < deadline, "the run did not start training"
        time.sleep(0.2)
    try:
        yield ex, run_id
    finally:
        if ex.status(run_id).status in ("queued", "running"):
            ex.cancel(run_id)
        end = time.monotonic() + 30
        while ex.status(run_id).status in ("queued", "running") and time.monotonic() < end:
            time.sleep(0.2)


def small_zip(i: int) -> bytes:
    """Two classes of three 24-px PNGs; `i` changes the pixels, so every cycle is a new dataset."""
    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for cls in ("left", "right"):
            for k in range(3):
                png = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(png, "PNG")
                zf.writestr(f"{cls}/{k}.png", png.getvalue())
    return buf.getvalue()


async def visit_every_page(browser, url: str, who: int) -> dict[str, float]:
    """One session: open Home, then click through every page; seconds until each page's title shows."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    times: dict[str, float] = {}
    try:
        for n, (slug, title) in enumerate(PAGES):
            start = time.monotonic()
            if n == 0:
                await page.goto(f"{url}/")
            else:
                await page.locator(f'a[data-testid="stSidebarNavLink"][href="{url}/{slug}"]').click()
            await page.get_by_role("heading", level=1, name=title, exact=True).wait_for(timeout=PAGE_BOUND_S * 1000)
            times[title] = time.monotonic() - start
            await page.wait_for_timeout(500)  # let the rest of the script run land
            errors = await page.locator('[data-testid="stException"]').all_inner_texts()
            assert errors == [], f"session {who}, page {title}: {errors}"
    finally:
        await context.close()
    return times


async def upload_and_clear(browser, url: str, cycles: int, pid: int, before: list[float]) -> None:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    try:
        await page.goto(f"{url}/data")
        await page.get_by_role("heading", level=1, name="Data", exact=True).wait_for(timeout=PAGE_BOUND_S * 1000)
        await page.locator('[data-testid="stRadioOption"]', has_text="Upload a .zip").click()
        uploader = page.locator('[data-testid="stFileUploader"] input[type="file"]')
        await uploader.wait_for(state="attached", timeout=PAGE_BOUND_S * 1000)
        await page.wait_for_timeout(1000)
        before.append(rss_mb(pid))
        for i in range(cycles):
            name = f"cycle{i:02d}.zip"
            chip = page.locator('[data-testid="stFileChip"]', has_text=name)
            for _attempt in range(3):  # a rerun can replace the input element just as the file is set: set it again
                await uploader.set_input_files(
                    files=[{"name": name, "mimeType": "application/zip", "buffer": small_zip(i)}]
                )
                try:
                    await chip.wait_for(timeout=10_000)
                    break
                except async_api.TimeoutError:
                    continue
            await page.get_by_role("heading", name=f"Dataset: cycle{i:02d}-").wait_for(timeout=PAGE_BOUND_S * 1000)
            assert await page.locator('[data-testid="stException"]').count() == 0
            await page.get_by_role("button", name=f"Remove {name}").click()
            await chip.wait_for(state="detached", timeout=15_000)
            await page.wait_for_timeout(300)
        await page.wait_for_timeout(1000)
    finally:
        await context.close()


async def drive(url: str, pid: int, between: Callable[[], None]) -> tuple[list[dict[str, float]], list[float]]:
    """The four sessions, then `between()` (outside the event loop), then the upload/clear cycles."""
    async with async_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            # Warm the server (its first page imports torch) so the four sessions measure steady-state pages.
            warm = await browser.new_page()
            await warm.goto(f"{url}/")
            await warm.get_by_role("heading", level=1, name=PAGES[0][1], exact=True).wait_for(
                timeout=FIRST_PAGE_BOUND_S * 1000
            )
            await warm.close()
            times = await asyncio.gather(*(visit_every_page(browser, url, who) for who in range(SESSIONS)))
            await asyncio.to_thread(between)
            before: list[float] = []
            await upload_and_clear(browser, url, UPLOAD_CYCLES, pid, before)
            return list(times), before
        finally:
            await browser.close()


def test_four_sessions_while_training_then_upload_cycles_keep_memory_bounded(server: Server, training) -> None:
    ex, run_id = training
    during: list = []

    def stop_training() -> None:
        """The run must have trained through the page visits; it then stops, leaving the CPU to the upload cycles."""
        during.append(ex.status(run_id))
        ex.cancel(run_id)
        end = time.monotonic() + 30
        while ex.status(run_id).status in ("queued", "running") and time.monotonic() < end:
            time.sleep(0.2)

    start = time.monotonic()
    times, before = run_in_fresh_thread(drive(server.url, server.pid, stop_training))
    total_s = time.monotonic() - start
    after = rss_mb(server.pid)
    status = during[0]
    slowest = max((t, title, who) for who, ts in enumerate(times) for title, t in ts.items())
    per_page = {title: round(max(ts[title] for ts in times), 2) for _, title in PAGES}
    print(
        f"\nFIGURES load: {SESSIONS} sessions x {len(PAGES)} pages at once while run {run_id} trained "
        f"(status after the visits: {status.status}, epoch {status.progress.get('epoch')}); longest page response "
        f"{slowest[0]:.2f} s ({slowest[1]}, session {slowest[2]}); slowest per page {per_page}"
    )
    print(
        f"FIGURES memory: server RSS {before[0]:.0f} MB before and {after:.0f} MB after {UPLOAD_CYCLES} upload/clear "
        f"cycles (+{after - before[0]:.0f} MB, bound +{MEMORY_BOUND_MB:.0f} MB); whole test {total_s:.0f} s"
    )
    assert status.status == "running", "the run must train throughout the four sessions' visits"
    assert ex.status(run_id).status == "cancelled"
    assert {"Data", "Train", "Evaluate", "Explain", "Predict", "Runs"} <= {title for _, title in PAGES} and PAGES[0][
        0
    ] == ""
    assert all(set(ts) == {title for _, title in PAGES} for ts in times)
    assert slowest[0] < PAGE_BOUND_S
    assert after - before[0] < MEMORY_BOUND_MB
