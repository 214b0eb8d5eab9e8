"""Sign-in and roles in the app, driven headless with AppTest and a mocked `st.user` per role (`at.user`), sign-in
configured through `at.secrets` (an `[auth]` section, never used to reach a provider here; the browser flow against a
real local provider is tests/test_signin_browser.py).

Row 25: a visitor (or an address with no role) gets Home only, or Home and the published model's page; a page the role
may not use is not registered, so its URL leads nowhere. Row 27 in the app: an upload past the disk quota is refused
naming the quota and nothing is written. The public page: only the published model, with its limits.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from classifier.workspace import datasets_dir, workspace_dir

APP = str(Path(__file__).resolve().parents[1] / "app.py")
AUTH = {
    "auth": {
        "redirect_uri": "http://localhost:8501/oauth2callback",
        "cookie_secret": "not-a-secret-only-a-test-0123456789",
        "client_id": "workbench",
        "client_secret": "test",
        "server_metadata_url": "http://127.0.0.1:9/.well-known/openid-configuration",
    }
}
ADMIN, TRAINER, OTHER, VIEWER, NOBODY = (
    "root@example.com", "tom@example.com", "tia@example.com", "vic@partner.org", "eve@elsewhere.net",
)  # fmt: skip
ACCESS = f"""
default = "none"
[users]
"{ADMIN}" = "admin"
"{VIEWER}" = "viewer"
[domains]
"example.com" = "trainer"
[quotas]
disk_mb_per_user = 0.2
public_images_per_request = 2
public_requests_per_session = 2
"""
PAGES = {  # role -> the pages its navigation registers (file names)
    "visitor": ["home"],
    "none": ["home"],
    "viewer": ["home", "evaluate", "compare", "explain", "predict"],
    "trainer": ["home", "data", "train", "search", "evaluate", "compare", "explain", "predict", "runs"],
    "admin": ["home", "data", "train", "search", "evaluate", "compare", "explain", "predict", "runs", "access"],
}
TIMEOUT = 90


@pytest.fixture(autouse=True)
def access_file() -> Path:
    path = workspace_dir() / "access.toml"
    path.write_text(ACCESS, encoding="utf-8")
    return path


def app_as(email: str | None, page: str | None = None) -> AppTest:
    """The app with sign-in configured, as `email` (None: a visitor who is not signed in)."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.secrets = AUTH
    at.user = {"is_logged_in": False} if email is None else {"is_logged_in": True, "email": email, "name": email}
    at.run()
    if page is not None:
        at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, at.exception
    return at


def registered(at: AppTest) -> list[str]:
    """The pages this session's navigation registered (what its sidebar lists and its URLs can reach)."""
    try:
        at.switch_page("ui/__init__.py")  # a file that is never a page
    except ValueError as e:
        known = str(e).split("Known pages: ")[1]
    return [Path(p).stem for p in re.findall(r"'([^']+\.py)'", known)]


@pytest.fixture
def finished_run(two_runs) -> str:
    """tia's completed run, in the store like one the job system finished."""
    import shutil

    from classifier import rundir
    from classifier.store import RunStore
    from classifier.workspace import runs_dir

    dest = runs_dir() / "r-tia"
    shutil.copytree(two_runs[0], dest)
    cfg = rundir.read_config(dest)
    RunStore().create("r-tia", "tia's shapes", {**cfg["train"], "backbone": cfg["backbone"]}, str(dest),
                      status="completed", owner=OTHER)  # fmt: skip
    return "r-tia"


@pytest.mark.parametrize(
    "email,role",
    [(None, "visitor"), (NOBODY, "none"), (VIEWER, "viewer"), (TRAINER, "trainer"), (ADMIN, "admin")],
)
def test_each_role_gets_exactly_its_pages(email: str | None, role: str) -> None:
    at = app_as(email)
    assert registered(at) == PAGES[role]
    for page in set(PAGES["admin"]) - set(PAGES[role]):
        with pytest.raises(ValueError, match="Could not find a navigation page"):
            at.switch_page(f"app_pages/{page}.py")  # what typing its URL finds: nothing, the default page
    if role in ("viewer", "trainer", "admin"):
        assert any(f"Signed in as {email} ({role})" in t.value for t in at.text)
        assert "Sign out" in [b.label for b in at.button]


def test_row25_a_visitor_sees_a_sign_in_prompt_and_nothing_else(finished_run) -> None:
    at = app_as(None)
    assert [b.label for b in at.button] == ["Sign in"]
    shown = " ".join([m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info])
    assert "Sign in to train" in shown
    assert "tia" not in shown and not at.dataframe  # no run, no dataset, no path
    assert str(workspace_dir()) not in shown
    nobody = app_as(NOBODY)
    assert any("no access to this workbench" in w.value for w in nobody.warning) and not nobody.dataframe


def test_without_sign_in_the_app_is_the_single_user_local_tool() -> None:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    assert any("Single-user local tool" in c.value for c in at.caption)
    assert "access" not in registered(at) and "runs" in registered(at)  # every page, no Access page


def test_trainers_see_others_finished_runs_but_cannot_delete_or_publish_them(finished_run) -> None:
    at = app_as(TRAINER, "runs")
    assert "tia's shapes" in at.dataframe[0].value["name"].tolist()
    assert any(f"Only its owner ({OTHER}) or an admin may delete" in c.value for c in at.caption)
    delete = next(b for b in at.button if b.label == "Delete run")
    assert delete.disabled and at.checkbox[0].disabled
    assert not [b for b in at.button if b.label.startswith("Publish")]
    owner = app_as(OTHER, "runs")
    assert [b.label for b in owner.button if b.label.startswith("Publish")] == ["Publish on the public page"]


def test_publish_then_a_visitor_predicts_within_the_limits(finished_run) -> None:
    owner = app_as(OTHER, "runs")
    next(b for b in owner.button if b.label.startswith("Publish")).click().run()
    assert not owner.exception and not owner.error, [e.value for e in owner.error]
    at = app_as(None)
    assert registered(at) == ["home", "public_predict"]
    assert any("is published" in i.value for i in at.info)
    at.switch_page("app_pages/public_predict.py").run()
    assert at.title[0].value == "Try the model" and not at.selectbox  # no picker: no other run can be reached
    page = " ".join([m.value for m in at.markdown] + [c.value for c in at.caption])
    assert "circle" in page and OTHER not in page and str(workspace_dir()) not in page  # no owner, no server path

    def upload(*seeds: int) -> None:
        at.file_uploader(key="u_pred_files").set_value([(f"photo{s}.png", _png(s), "image/png") for s in seeds]).run()
        assert not at.exception, at.exception

    upload(1)
    assert any(m.value.startswith("**") and "%" in m.value for m in at.markdown), [m.value for m in at.markdown]
    upload(1, 2, 3)
    assert any("3 images at once; visitors may send up to 2" in e.value for e in at.error)
    upload(4, 5)
    assert not at.error
    upload(6)
    assert any("made 2 predictions, the most a visitor may make (2)" in e.value for e in at.error)


def _zip(seed: int = 0) -> bytes:
    """Two classes of three noise PNGs (about 120 kB each: noise does not compress), ~0.7 MB in all."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for cls in ("cats", "dogs"):
            for i in range(3):
                zf.writestr(f"{cls}/{i}.png", _png(seed + i + (100 if cls == "dogs" else 0), size=200))
    return buf.getvalue()


def test_row27_an_upload_past_the_disk_quota_is_refused_naming_it_and_nothing_is_written() -> None:
    data = _zip()
    assert len(data) > 200_000
    at = app_as(TRAINER, "data")
    at.radio(key="w_source").set_value("Upload a .zip").run()
    at.file_uploader[0].upload("pets.zip", data, "application/zip").run()
    assert not at.exception, at.exception
    assert any("disk quota reached" in e.value and "limit is 0 MB per user" in e.value for e in at.error), [
        e.value for e in at.error
    ]
    assert [d.name for d in datasets_dir().iterdir() if not d.name.startswith(".")] == []


def test_uploads_past_the_sessions_upload_quota_are_refused_naming_it(access_file: Path) -> None:
    quotas = "disk_mb_per_user = 100\nupload_mb_per_session = 1.0"
    access_file.write_text(ACCESS.replace("disk_mb_per_user = 0.2", quotas), encoding="utf-8")
    at = app_as(TRAINER, "data")
    at.radio(key="w_source").set_value("Upload a .zip").run()
    first, second = _zip(seed=0), _zip(seed=10)
    assert 600_000 < len(first) < 1_000_000 and len(first) + len(second) > 1_000_000
    at.file_uploader[0].upload("pets.zip", first, "application/zip").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.file_uploader[0].upload("more.zip", second, "application/zip").run()
    assert any("upload quota reached" in e.value and "per session" in e.value for e in at.error), [
        e.value for e in at.error
    ]
    assert len([d for d in datasets_dir().iterdir() if not d.name.startswith(".")]) == 1  # the second never written


def test_admins_see_the_access_list_and_everyones_use(finished_run) -> None:
    at = app_as(ADMIN, "access")
    assert at.title[0].value == "Access"
    who = at.dataframe[0].value
    assert set(zip(who["who"], who["role"])) == {(ADMIN, "admin"), (VIEWER, "viewer"), ("@example.com", "trainer")}
    assert OTHER in at.dataframe[2].value["user"].tolist()


def _png(seed: int, size: int = 24) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_the_cloud_entry_point_runs_the_same_app() -> None:
    at = AppTest.from_file(str(Path(APP).parent / "cloud" / "streamlit_app.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Image classifier workbench"
    at.switch_page("app_pages/train.py").run()  # pages resolve through cloud/app_pages, the link to ../app_pages
    assert not at.exception and at.title[0].value == "Train"


def test_cloud_requirements_take_cpu_only_torch_and_everything_else_the_app_needs() -> None:
    root = Path(APP).parent

    def names(path: Path) -> dict[str, str]:
        out = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-"):
                out[re.split(r"[\[<>=!~ ]", line)[0].lower()] = line
        return out

    cloud, full = names(root / "cloud" / "requirements.txt"), names(root / "requirements.txt")
    text = (root / "cloud" / "requirements.txt").read_text(encoding="utf-8")
    assert re.search(r"^--extra-index-url https://download\.pytorch\.org/whl/cpu$", text, re.M)
    assert re.fullmatch(r"torch==[\d.]+\+cpu", cloud["torch"]) and re.fullmatch(
        r"torchvision==[\d.]+\+cpu", cloud["torchvision"]
    )
    assert set(full) - set(cloud) == {"ray"}  # the Ray executor only; Cloud runs training as local processes
    assert "streamlit[auth]" in cloud["streamlit"]
