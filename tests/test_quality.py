"""Data quality: the flip-and-find loop (on synthetic features, then on generated images through the scan and dataset
versions), edits and versions (a run on version 2 sees its relabels, version 1 is unchanged, the files untouched),
the `issues` and `versions` commands, and the Data page's Issues tab driven with AppTest.

Images are generated: solid colours with noise, one colour per class, so even the random-weight `simple_cnn` at
32 px separates them and a flipped label stands out. Every test has its own workspace (conftest.py).
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from classifier.cli import main
from classifier.data.dataset import index_dataset, load_dataset, save_version
from classifier.data.splits import assign_splits
from classifier.data.versions import DatasetVersions, Edits
from classifier.errors import DatasetError
from classifier.quality import CSV_COLUMNS, find_issues, out_of_sample_probs, scan_dataset
from classifier.training import TrainConfig

APP = str(Path(__file__).resolve().parents[1] / "app.py")
COLOURS = {"blue": (50, 60, 200), "green": (50, 180, 60), "red": (200, 50, 50)}
FAST = {"backbone": "simple_cnn", "weights": "none", "img_size": 32}  # random-weight features: enough for colours


def colour_dataset(root: Path, per_class: int = 20, size: int = 32) -> Path:
    for ci, (name, rgb) in enumerate(COLOURS.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rng = np.random.default_rng([ci, i])
            pixels = np.clip(np.array(rgb) + rng.normal(0, 35, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}_{i:02d}.png")
    return root


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def flip(index, n: int, seed: int = 0) -> dict[str, str]:
    """Relabel `n` images (drawn with `seed`) to the next class: the noise the scan should find."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(index.samples), size=n, replace=False)
    names = index.classes
    return {index.samples[i].path: names[(index.samples[i].label + 1) % len(names)] for i in sorted(picks)}


def recall_precision_at(ranked: list[str], truth: set[str], k: int) -> tuple[float, float]:
    hit = len(set(ranked[:k]) & truth)
    return hit / len(truth), hit / max(1, k)


# --- the flip-and-find loop --------------------------------------------------------------------------------------


def test_probe_and_cleanlab_find_flipped_labels_in_synthetic_features():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (3, 16)) * 3
    truth = np.repeat(np.arange(3), 60)
    features = centres[truth] + rng.normal(0, 1, (180, 16))
    noisy = truth.copy()
    flipped = rng.choice(180, size=18, replace=False)
    noisy[flipped] = (noisy[flipped] + 1) % 3
    probe = out_of_sample_probs(features, noisy, 3, folds=5, seed=0)
    assert probe.probs.shape == (180, 3) and np.allclose(probe.probs.sum(axis=1), 1)
    found = find_issues(features, probe.probs, noisy, ["a", "b", "c"])
    ranked = [str(i) for i in found.images["label_score"].sort_values(ascending=False, kind="stable").index]
    recall, precision = recall_precision_at(ranked, {str(i) for i in flipped}, len(flipped))
    assert recall >= 0.8 and precision >= 0.8
    flagged = set(np.flatnonzero(found.images["is_label"]))
    assert len(flagged & set(flipped)) / len(flagged) >= 0.7  # cleanlab's own flags are mostly real
    assert (found.images.loc[flipped, "suggested"] == np.array(["a", "b", "c"])[truth[flipped]]).mean() >= 0.8
    assert len(found.overlap) and set(found.overlap.columns) == {"class_a", "class_b", "images", "score"}


def test_multi_label_targets_get_one_vs_rest_probabilities_and_label_issues():
    """The probe and cleanlab take multi-label targets already (a dataset that has them only needs to pass the 0/1
    matrix): a class removed from some images' label sets is found."""
    rng = np.random.default_rng(1)
    truth = (rng.uniform(size=(150, 3)) < 0.4).astype(int)
    truth[truth.sum(axis=1) == 0, 0] = 1
    features = truth @ (rng.normal(0, 1, (3, 12)) * 4) + rng.normal(0, 1, (150, 12))
    noisy = truth.copy()
    dropped = [i for i in rng.permutation(150) if truth[i].sum() >= 2][:12]
    for i in dropped:
        noisy[i, np.flatnonzero(truth[i])[0]] = 0
    probe = out_of_sample_probs(features, noisy, 3, folds=5, seed=0)
    found = find_issues(features, probe.probs, noisy, ["a", "b", "c"])
    ranked = [str(i) for i in found.images["label_score"].sort_values(ascending=False, kind="stable").index]
    recall, _ = recall_precision_at(ranked, {str(i) for i in dropped}, 2 * len(dropped))
    assert recall >= 0.7
    assert all(";" in s or s in ("a", "b", "c", "") for s in found.images["suggested"])


def test_flip_and_find_on_generated_images_through_a_version(tmp_path):
    root = colour_dataset(tmp_path / "colours")
    before = digests(root)
    noisy = flip(index_dataset(root), 6)
    v1 = save_version(str(root), Edits(relabel=noisy), note="noise")
    result = scan_dataset(TrainConfig(data=str(root), data_version=v1, **FAST))
    assert result.meta["version"] == 1 and result.meta["features"]["computed"] == 60
    ranked = result.images.sort_values("label_score", ascending=False, kind="stable")["path"].tolist()
    recall, precision = recall_precision_at(ranked, set(noisy), len(noisy))
    assert recall >= 0.8 and precision >= 0.8
    table = result.issues()
    assert list(table.columns) == list(CSV_COLUMNS)
    labels = table[table["issue"] == "label"]
    assert set(labels["path"]) & set(noisy) and labels["score"].is_monotonic_decreasing
    for path, row in labels.set_index("path").iterrows():
        if path in noisy:
            assert row["given_label"] == noisy[path] and row["suggested_label"] != noisy[path]
    assert all((root / p).is_file() for p in table["path"] if p)  # relative to the dataset root

    # Fix as suggested: a new version; its scan reuses every feature, and a second scan of it is read back.
    fixes = dict(zip(labels["path"], labels["suggested_label"]))
    v2 = save_version(str(root), Edits(relabel=fixes))
    again = scan_dataset(TrainConfig(data=str(root), data_version=v2, **FAST))
    assert again.meta["features"] == {"computed": 0, "reused": 60} and not again.meta["cached"]
    assert again.counts()["label"] < result.counts()["label"]
    assert scan_dataset(TrainConfig(data=str(root), data_version=v2, **FAST)).meta["cached"]
    assert digests(root) == before


# --- edits and versions ------------------------------------------------------------------------------------------


def test_versions_apply_edits_keep_older_versions_and_never_touch_the_files(tmp_path):
    root = colour_dataset(tmp_path / "colours", per_class=6)
    before = digests(root)
    versions = DatasetVersions(root)
    versions.edit(Edits(relabel={"red/red_00.png": "blue"}, exclude={"green/green_01.png"}))
    assert DatasetVersions(root).draft().relabel == {"red/red_00.png": "blue"}  # the draft is a file
    assert save_version(str(root)) == 1 and not versions.draft()
    v2 = save_version(str(root), Edits(relabel={"red/red_02.png": "green"}, restore={"green/green_01.png"},
                                        reviewed={"blue/blue_03.png"}))  # fmt: skip
    assert v2 == 2
    v0, v1, latest = load_dataset(str(root), 0), load_dataset(str(root), 1), load_dataset(str(root))
    label = {s.path: v1.classes[s.label] for s in v1.samples}
    assert label["red/red_00.png"] == "blue" and "green/green_01.png" not in label and label["red/red_02.png"] == "red"
    label = {s.path: latest.classes[s.label] for s in latest.samples}
    assert latest.version == 2 and label["red/red_02.png"] == "green" and "green/green_01.png" in label
    assert label["red/red_00.png"] == "blue" and versions.get(2).reviewed == {"blue/blue_03.png"}
    assert v0.version == 0 and len(v0.samples) == 18 and not v0.relabelled
    assert v1.relabelled == {"red/red_00.png": ("red", "blue")} and v1.excluded == ["green/green_01.png"]
    # A relabel never moves another image between train and validation.
    base = dict(zip((s.path for s in v0.samples), assign_splits(v0, 0.3, 0.0, 0)))
    assert all(base[s.path] == sp for s, sp in zip(latest.samples, assign_splits(latest, 0.3, 0.0, 0)))
    with pytest.raises(DatasetError, match="'purple', which is not a class"):
        save_version(str(root), Edits(relabel={"red/red_03.png": "purple"}))
    with pytest.raises(DatasetError, match="no dataset version 7"):
        load_dataset(str(root), 7)
    assert versions.numbers() == [1, 2] and digests(root) == before


def test_a_run_on_version_2_sees_its_relabels_and_records_the_version(tmp_path):
    from classifier.compare import differing_settings
    from classifier.rundir import read_config, read_split
    from classifier.training import fit

    root = colour_dataset(tmp_path / "colours", per_class=8)
    before = digests(root)
    save_version(str(root), Edits(relabel={"red/red_00.png": "blue"}))
    save_version(str(root), Edits(relabel={"red/red_01.png": "green"}, exclude={"blue/blue_00.png"}))
    runs = {}
    for version in (1, 2):
        cfg = TrainConfig(data=str(root), data_version=version, epochs=1, batch_size=8, seed=0, **FAST)
        runs[version] = tmp_path / f"run-v{version}"
        assert fit(cfg, runs[version]).status == "completed"
    rows = {v: {r["path"]: r for r in read_split(d)} for v, d in runs.items()}
    assert rows[2]["red/red_00.png"]["label"] == "blue" and rows[2]["red/red_01.png"]["label"] == "green"
    assert "blue/blue_00.png" not in rows[2]
    assert rows[1]["red/red_00.png"]["label"] == "blue" and rows[1]["red/red_01.png"]["label"] == "red"
    assert "blue/blue_00.png" in rows[1]
    assert all(rows[1][p]["split"] == r["split"] for p, r in rows[2].items())  # same images in validation
    configs = {str(v): read_config(d) for v, d in runs.items()}
    assert configs["2"]["dataset"]["version"] == 2 and configs["1"]["dataset"]["version"] == 1
    assert differing_settings(configs)["dataset.version"] == {"1": 1, "2": 2}
    assert digests(root) == before


# --- the commands ------------------------------------------------------------------------------------------------


def test_issues_and_versions_commands(tmp_path, capsys):
    root = colour_dataset(tmp_path / "colours")
    noisy = flip(index_dataset(root), 6, seed=3)
    assert main(["versions", "--data", str(root), "--relabel", *[f"{p}={c}" for p, c in noisy.items()]]) == 0
    out = tmp_path / "issues.csv"
    fast = ["--backbone", "simple_cnn", "--weights", "none", "--img-size", "32"]
    assert main(["issues", "--data", str(root), *fast, "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "version 1" in printed and "label:" in printed
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(CSV_COLUMNS)
    found = [r for r in rows if r["issue"] == "label"]
    assert len({r["path"] for r in found} & set(noisy)) >= 5
    assert main(["versions", "--data", str(root), "--from-issues", str(out), "--accept", "label", "--json"]) == 0
    saved = json.loads(capsys.readouterr().out)
    assert saved["version"] == 2 and saved["relabelled"] == len(found)
    assert load_dataset(str(root), 2).relabelled.keys() >= {r["path"] for r in found} - set(noisy)
    assert main(["versions", "--data", str(root), "--relabel", "red/red_00.png=purple"]) == 2
    assert "error:" in capsys.readouterr().err and DatasetVersions(root).numbers() == [1, 2]
    assert main(["issues", "--data", str(tmp_path / "missing"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err


# --- the Issues tab ----------------------------------------------------------------------------------------------


def test_issues_tab_scans_and_its_actions_become_a_new_version(tmp_path):
    root = colour_dataset(tmp_path / "colours")
    before = digests(root)
    noisy = flip(index_dataset(root), 6, seed=5)
    save_version(str(root), Edits(relabel=noisy))
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["dataset_path"] = str(root)
    at.run()
    at.switch_page("app_pages/data.py").run()
    assert not at.exception
    assert any("Version 1: 6 relabelled" in c.value for c in at.caption)
    at.radio(key="w_data_view").set_value("Issues").run()
    at.selectbox(key="w_scan_backbone").set_value("simple_cnn").run()
    at.button(key="b_scan").click().run()
    assert not at.exception, at.exception
    cards = [b.key.removeprefix("b_relabel_label_") for b in at.button if (b.key or "").startswith("b_relabel_label_")]
    assert len(cards) >= 3 and set(cards[:3]) <= set(noisy)
    relabel, exclude, reviewed = cards[:3]
    at.button(key=f"b_relabel_label_{relabel}").click().run()
    at.button(key=f"b_exclude_label_{exclude}").click().run()
    at.button(key=f"b_reviewed_label_{reviewed}").click().run()
    assert not at.exception, at.exception
    draft = DatasetVersions(root).draft()
    assert set(draft.relabel) == {relabel}
    assert draft.relabel[relabel] != noisy[relabel] and draft.exclude == {exclude} and draft.reviewed == {reviewed}
    assert not any((b.key or "").endswith(reviewed) for b in at.button)  # pending images have no buttons left
    at.text_input(key="e_version_note").input("fixes from the scan")
    at.button(key="b_save_version").click().run()
    assert not at.exception, at.exception
    assert any("Saved version 2" in s.value for s in at.success)
    v2 = DatasetVersions(root).get(2)
    assert v2.note == "fixes from the scan" and v2.reviewed == {reviewed} and exclude in v2.exclude
    index = load_dataset(str(root), 2)
    labels = {s.path: index.classes[s.label] for s in index.samples}
    files = load_dataset(str(root), 0)
    true = {s.path: files.classes[s.label] for s in files.samples}
    assert labels[relabel] == draft.relabel[relabel] == true[relabel] and exclude not in labels  # the colour's class
    assert not DatasetVersions(root).draft() and digests(root) == before
