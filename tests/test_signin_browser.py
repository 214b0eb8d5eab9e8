"""Sign-in in a real browser against a local OpenID Connect provider the test starts (oidc-provider-mock; no
internet): Streamlit's own `st.login` flow, then each role's walk.

The provider runs in this process on a free port; the app gets `[auth]` through a secrets file of its own
(`--secrets.files`) and the roles through an access file in its workspace. A visitor sees Home and the published
model's page; a viewer, a trainer and an admin sign in on the provider's page (the address typed as the subject, which
the provider also sends as the e-mail claim) and get exactly their pages; typing the URL of a page the role may not use
shows Home, not that page (row 25). Prints one `FIGURES` line: seconds per role's walk.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from live_app import Server, free_port, require_chromium, streamlit_app
from PIL import Image

pytestmark = [pytest.mark.browser, pytest.mark.slow]

require_chromium()
sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need Playwright for Python")
oidc_mock = pytest.importorskip("oidc_provider_mock", reason="the sign-in test needs oidc-provider-mock")
expect = sync_api.expect

ADMIN, TRAINER, VIEWER = "root@example.com", "tom@example.com", "vic@partner.org"
SLOW_MS = 120_000
NAV = {  # what each role's sidebar lists
    "visitor": ["Home", "Try the model"],
    "viewer": ["Home", "Evaluate", "Compare", "Explain", "Predict"],
    "trainer": ["Home", "Data", "Train", "Search", "Evaluate", "Compare", "Explain", "Predict", "Runs"],
    "admin": ["Home", "Data", "Train", "Search", "Evaluate", "Compare", "Explain", "Predict", "Runs", "Access"],
}
FORBIDDEN = {"visitor": ("train", "Train"), "viewer": ("train", "Train"), "trainer": ("access", "Access")}


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    with oidc_mock.run_server_in_thread(port=free_port()) as server:
        yield f"http://localhost:{server.server_port}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, provider: str, two_runs) -> Iterator[Server]:
    """The app with sign-in on, an access file, and a published run of the trainer's."""
    base = tmp_path_factory.mktemp("signin")
    port = free_port()
    secrets = base / "secrets.toml"
    secrets.write_text(
        "[auth]\n"
        f'redirect_uri = "http://127.0.0.1:{port}/oauth2callback"\n'
        'cookie_secret = "a-test-cookie-secret-that-is-long-enough"\n'
        'client_id = "workbench"\nclient_secret = "any"\n'
        f'server_metadata_url = "{provider}/.well-known/openid-configuration"\n',
        encoding="utf-8",
    )
    workspace = base / "workspace"
    workspace.mkdir()
    (workspace / "access.toml").write_text(
        f'default = "none"\n[users]\n"{ADMIN}" = "admin"\n"{VIEWER}" = "viewer"\n'
        '[domains]\n"example.com" = "trainer"\n',
        encoding="utf-8",
    )
    _publish_a_run(workspace, two_runs[1])
    with streamlit_app(base, ["--secrets.files", str(secrets)], port=port) as srv:
        yield srv


def _publish_a_run(workspace: Path, src: Path) -> None:
    """A completed run of the trainer's in the store, published (as the Runs page's button does)."""
    import os

    from classifier import rundir
    from classifier.access import User
    from classifier.jobs import LocalProcessExecutor
    from classifier.jobs.catalogue import entries
    from classifier.public import publish
    from classifier.store import RunStore

    old = os.environ["CLASSIFIER_WORKSPACE"]
    os.environ["CLASSIFIER_WORKSPACE"] = str(workspace)
    try:
        dest = workspace / "runs" / "r-shapes"
        shutil.copytree(src, dest)
        cfg = rundir.read_config(dest)
        RunStore().create("r-shapes", "shapes demo", {**cfg["train"], "backbone": cfg["backbone"]}, str(dest),
                          status="completed", owner=TRAINER)  # fmt: skip
        entry = next(e for e in entries(executor=LocalProcessExecutor()) if e.run_id == "r-shapes")
        publish(entry, User(TRAINER, "trainer"))
    finally:
        os.environ["CLASSIFIER_WORKSPACE"] = old


def heading(page: sync_api.Page, title: str) -> sync_api.Locator:
    return page.get_by_role("heading", level=1, name=title, exact=True)


def nav(page: sync_api.Page) -> list[str]:
    links = page.locator('a[data-testid="stSidebarNavLink"]')
    links.first.wait_for(timeout=SLOW_MS)
    return [t.strip().splitlines()[-1] for t in links.all_inner_texts()]  # a link's text: its icon's name, its title


def sign_in(page: sync_api.Page, url: str, email: str) -> None:
    page.goto(f"{url}/")
    heading(page, "Image classifier workbench").wait_for(timeout=SLOW_MS)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_placeholder("sub").wait_for(timeout=SLOW_MS)  # the provider's own page
    page.get_by_placeholder("sub").fill(email)
    page.get_by_role("button", name="Authorize").click()
    page.wait_for_url(re.compile(rf"^{re.escape(url)}/?(\?.*)?$"), timeout=SLOW_MS)
    expect(page.get_by_text(f"Signed in as {email}")).to_be_visible(timeout=SLOW_MS)


def forbidden_url_shows_home(page: sync_api.Page, url: str, slug: str, title: str) -> None:
    page.goto(f"{url}/{slug}")
    heading(page, "Image classifier workbench").wait_for(timeout=SLOW_MS)
    expect(heading(page, title)).to_have_count(0)
    dialog = page.get_by_role("dialog")  # Streamlit says the page was not found, over Home
    expect(dialog).to_contain_text("Page not found", timeout=SLOW_MS)
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_each_role_signs_in_and_gets_its_pages(server: Server, browser: sync_api.Browser, tmp_path: Path) -> None:
    url, seconds = server.url, {}

    # A visitor: Home with Sign in, the published model, and nothing else.
    t0 = time.monotonic()
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    page = ctx.new_page()
    page.goto(f"{url}/")
    heading(page, "Image classifier workbench").wait_for(timeout=SLOW_MS)
    assert nav(page) == NAV["visitor"]
    expect(page.get_by_text("shapes demo")).to_be_visible()
    assert TRAINER not in page.content() and "r-shapes" not in page.content()
    forbidden_url_shows_home(page, url, *FORBIDDEN["visitor"])
    page.get_by_role("link", name="Try the model").first.click()
    heading(page, "Try the model").wait_for(timeout=SLOW_MS)
    photo = tmp_path / "red.png"
    photo.write_bytes(png())
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(photo))
    expect(page.get_by_text(re.compile(r"— \d+\.\d%"))).to_be_visible(timeout=SLOW_MS)
    assert str(server.workspace) not in page.content()
    ctx.close()
    seconds["visitor"] = round(time.monotonic() - t0, 1)

    for role, email in (("viewer", VIEWER), ("trainer", TRAINER), ("admin", ADMIN)):
        t0 = time.monotonic()
        ctx = browser.new_context(viewport={"width": 1400, "height": 900})
        page = ctx.new_page()
        sign_in(page, url, email)
        assert nav(page) == NAV[role], role
        if role in FORBIDDEN:
            forbidden_url_shows_home(page, url, *FORBIDDEN[role])
        if role == "viewer":
            page.goto(f"{url}/evaluate")
            heading(page, "Evaluate").wait_for(timeout=SLOW_MS)  # the team's finished run, to look at
            picker = page.get_by_role("combobox", name="Completed run or saved ensemble")
            expect(picker).to_have_value(re.compile(r"^shapes demo"), timeout=SLOW_MS)
            expect(page.get_by_text(re.compile(r"^\d+ validation images"))).to_be_visible(timeout=SLOW_MS)
        if role == "trainer":
            page.goto(f"{url}/runs")
            heading(page, "Runs").wait_for(timeout=SLOW_MS)
            expect(page.get_by_text("This model is on the public prediction page.")).to_be_visible(timeout=SLOW_MS)
        if role == "admin":
            page.goto(f"{url}/access")
            heading(page, "Access").wait_for(timeout=SLOW_MS)
            expect(page.get_by_text("published by tom@example.com")).to_be_visible(timeout=SLOW_MS)
        page.get_by_role("button", name="Sign out").click()
        page.get_by_role("button", name="End session").click(timeout=SLOW_MS)  # the provider's logout (RP-initiated)
        page.goto(f"{url}/")
        page.get_by_role("button", name="Sign in").wait_for(timeout=SLOW_MS)
        assert nav(page) == NAV["visitor"]
        ctx.close()
        seconds[role] = round(time.monotonic() - t0, 1)
    print("FIGURES", json.dumps({"walk_seconds": seconds}))
