"""Settings that stay: the Train form keeps every value across page switches (through the router app.py), a new
session (a reload) gets the user's last settings back from the workspace, and the URL's dataset wins over them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from classifier.workspace import datasets_dir, user_settings_path

TIMEOUT = 60
APP = str(Path(__file__).resolve().parent.parent / "app.py")


@pytest.fixture
def two_datasets(tmp_path) -> tuple[Path, Path]:
    from classifier.data.demo import make_demo_dataset

    a = make_demo_dataset(datasets_dir() / "shapes-a", n_per_class=4, size=32, seed=1, classes=("circle", "square"))
    b = make_demo_dataset(datasets_dir() / "shapes-b", n_per_class=4, size=32, seed=2, classes=("circle", "cross"))
    return a, b


def open_app(page: str = "app_pages/train.py") -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def set_train_form(at: AppTest, data: Path) -> None:
    at.selectbox(key="w_data").set_value(str(data)).run()
    at.radio(key="w_mode").set_value("linear").run()
    at.number_input(key="w_epochs_linear").set_value(5).run()
    at.number_input(key="w_lr_linear").set_value(0.01).run()
    at.selectbox(key="w_aug_linear").set_value("strong").run()
    at.selectbox(key="w_opt").set_value("sgd").run()
    at.text_input(key="w_run_name").set_value("kept").run()
    assert not at.exception, at.exception


def train_form(at: AppTest) -> dict:
    return {
        "data": at.selectbox(key="w_data").value,
        "mode": at.radio(key="w_mode").value,
        "epochs": at.number_input(key="w_epochs_linear").value,
        "lr": at.number_input(key="w_lr_linear").value,
        "augment": at.selectbox(key="w_aug_linear").value,
        "optimizer": at.selectbox(key="w_opt").value,
        "name": at.text_input(key="w_run_name").value,
    }


EXPECTED = {"mode": "linear", "epochs": 5, "lr": 0.01, "augment": "strong", "optimizer": "sgd", "name": "kept"}


def test_train_form_survives_page_switches(two_datasets):
    at = open_app()
    set_train_form(at, two_datasets[1])
    for page in ("app_pages/data.py", "app_pages/runs.py", "app_pages/explain.py", "app_pages/train.py"):
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
    assert train_form(at) == {"data": str(two_datasets[1]), **EXPECTED}
    # The Data page shows the dataset picked on Train, and picking another there reaches Train.
    at.switch_page("app_pages/data.py").run()
    assert at.header[0].value == f"Dataset: {two_datasets[1].name}"


def test_a_new_session_gets_the_last_settings_and_the_url_dataset_wins(two_datasets):
    at = open_app()
    set_train_form(at, two_datasets[1])
    saved = json.loads(user_settings_path("local").read_text())
    assert saved["w_mode"] == "linear" and saved["w_epochs_linear"] == 5 and saved["w_data"] == str(two_datasets[1])
    assert at.query_params["dataset"] == two_datasets[1].name

    reloaded = open_app()  # a reload: a new session
    assert train_form(reloaded) == {"data": str(two_datasets[1]), **EXPECTED}

    linked = AppTest.from_file(APP, default_timeout=TIMEOUT)
    linked.query_params["dataset"] = two_datasets[0].name
    linked.run()
    linked.switch_page("app_pages/train.py").run()
    assert linked.selectbox(key="w_data").value == str(two_datasets[0])
    assert linked.radio(key="w_mode").value == "linear"  # the rest still from the user's settings


def test_the_demo_is_listed_once(two_datasets):
    from classifier.data.demo import demo_dataset_path

    at = open_app()
    options = at.selectbox(key="w_data").options
    assert options.count("Built-in demo dataset (shapes)") == 1
    demo_dataset_path().mkdir(parents=True)  # once generated, the folder is the demo's one entry
    (demo_dataset_path() / "circle").mkdir()
    at.switch_page("app_pages/data.py").run()
    at.switch_page("app_pages/train.py").run()
    assert at.selectbox(key="w_data").options.count("Built-in demo dataset (shapes)") == 1
