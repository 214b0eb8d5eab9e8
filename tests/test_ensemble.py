"""Ensembles: metrics equal those of probabilities averaged by hand from each member's own predictions; class and
validation-set mismatches are refused naming the run; saved ensembles load, predict and fail clearly without a
member; the ensemble CLI."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from classifier.cli import main
from classifier.data.images import load_image
from classifier.ensemble import Ensemble, build_ensemble, list_ensembles, load_ensemble
from classifier.errors import RunError
from classifier.metrics import compute_metrics
from classifier.predict import load_run, predict_images
from classifier.rundir import read_val_predictions


def _val_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "split.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["split"] == "val"]


def test_ensemble_metrics_equal_hand_averaged_probabilities(two_runs, tmp_path) -> None:
    a, b = two_runs
    out = tmp_path / "ens"
    metrics = build_ensemble([a, b], out, name="both")

    # By hand: each member's own predict (its own 32 px / 40 px eval transform) on the same decoded images.
    cfg = json.loads((a / "config.json").read_text())
    root, names = Path(cfg["dataset"]["root"]), cfg["class_names"]
    rows = _val_rows(a)
    images = [load_image(root / r["path"]) for r in rows]
    y = np.array([names.index(r["label"]) for r in rows])
    member_probs = [predict_images(load_run(d), images) for d in (a, b)]
    assert not np.allclose(member_probs[0], member_probs[1])  # the members really differ
    expected = compute_metrics(y, (member_probs[0] + member_probs[1]) / 2, names)

    for key in ("accuracy", "macro_f1", "weighted_f1", "roc_auc_macro", "average_precision_macro", "ece", "log_loss",
                "top_k_accuracy", "n_val"):  # fmt: skip
        assert metrics[key] == pytest.approx(expected[key], abs=1e-6), key
    assert metrics["confusion_matrix"] == expected["confusion_matrix"]
    for got, want in zip(metrics["per_class"], expected["per_class"]):
        assert got == pytest.approx(want, abs=1e-6)
    assert [m["run_id"] for m in metrics["members"]] == ["run_a", "run_b"]
    assert metrics["members"][1]["accuracy"] == pytest.approx(float((member_probs[1].argmax(1) == y).mean()))

    # Saved like a run: Evaluate's reader finds the same validation set and (rounded) probabilities.
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == metrics["accuracy"]
    vp = read_val_predictions(out)
    assert list(vp.table["path"]) == [r["path"] for r in rows] and vp.class_names == names
    assert np.allclose(vp.probs, (member_probs[0] + member_probs[1]) / 2, atol=1e-5)
    assert compute_metrics(vp.y_true, vp.probs, vp.class_names)["accuracy"] == pytest.approx(expected["accuracy"])

    ens = load_ensemble(out)
    assert ens.name == "both" and ens.class_names == names
    assert np.allclose(ens.predict_images(images[:3]), (member_probs[0][:3] + member_probs[1][:3]) / 2, atol=1e-6)


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def test_members_must_have_the_same_classes_in_the_same_order(two_runs, tmp_path) -> None:
    a = two_runs[0]
    reordered = _copy(a, tmp_path / "reordered")
    cfg = json.loads((reordered / "config.json").read_text())
    cfg["class_names"] = cfg["class_names"][::-1]
    (reordered / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RunError, match=r"reordered .*another order"):
        Ensemble([load_run(a), load_run(reordered)])

    renamed = _copy(a, tmp_path / "renamed")
    cfg = json.loads((renamed / "config.json").read_text())
    cfg["class_names"] = ["circle", "cross", "star"]
    (renamed / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RunError, match=r"renamed .*has star which run_a lacks; it lacks square"):
        build_ensemble([a, renamed], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_members_must_share_the_validation_images(two_runs, tmp_path) -> None:
    a, b = two_runs
    other = _copy(b, tmp_path / "other_split")
    lines = (other / "split.csv").read_text().splitlines()
    i = next(n for n, line in enumerate(lines) if line.endswith(",val"))
    lines[i] = lines[i][: -len(",val")] + ",train"
    (other / "split.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(RunError, match=r"other_split was validated on other images .*1 images only in the first"):
        build_ensemble([a, other], tmp_path / "out")


def test_saved_ensemble_lists_and_fails_clearly_without_a_member(two_runs, tmp_path, monkeypatch) -> None:
    from classifier.ensemble import ensembles_dir

    a, b = two_runs
    b2 = _copy(b, tmp_path / "b2")
    out = ensembles_dir() / "ab"
    build_ensemble([a, b2], out)
    assert [d for d, _ in list_ensembles()] == [out]
    with pytest.raises(RunError, match="needs at least two runs"):
        build_ensemble([a], tmp_path / "one")
    with pytest.raises(RunError, match="not empty"):
        build_ensemble([a, b2], out)
    shutil.rmtree(b2)
    with pytest.raises(RunError, match=r"member run .*b2 is missing"):
        load_ensemble(out)


def test_ensemble_cli(two_runs, tmp_path, capsys) -> None:
    a, b = two_runs
    out = tmp_path / "cli-ens"
    assert main(["ensemble", "--runs", str(a), str(b), "--out", str(out), "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["ensemble_dir"] == str(out) and 0.0 <= printed["accuracy"] <= 1.0
    stored = json.loads((out / "ensemble.json").read_text())["members"][0]["run_dir"]
    assert not Path(stored).is_absolute() and (out / stored).resolve() == a.resolve()
    assert main(["ensemble", "--runs", str(a), str(b), "--out", str(out)]) == 2  # exists: refused
    assert "not empty" in capsys.readouterr().err


def test_predict_and_evaluate_cli_take_a_saved_ensemble(two_runs, tmp_path, capsys) -> None:
    a, b = two_runs
    out = tmp_path / "ens"
    metrics = build_ensemble([a, b], out)
    cfg = json.loads((a / "config.json").read_text())
    image = Path(cfg["dataset"]["root"]) / _val_rows(a)[0]["path"]

    assert main(["evaluate", "--run", str(out), "--device", "cpu"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["accuracy"] == pytest.approx(metrics["accuracy"]) and evaluated["split"] == "val"
    assert evaluated["log_loss"] == pytest.approx(metrics["log_loss"], abs=1e-6)

    assert main(["predict", "--run", str(out), str(image), str(tmp_path / "missing.png"), "--top-k", "3"]) == 2
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "missing.png" in lines[1]["error"]
    want = (predict_images(load_run(a), [load_image(image)]) + predict_images(load_run(b), [load_image(image)]))[0] / 2
    assert dict(lines[0]["top_k"]) == pytest.approx(dict(zip(cfg["class_names"], want.round(6))), abs=1e-6)


def test_saved_ensemble_still_loads_after_the_workspace_moves(two_runs, tmp_path) -> None:
    a, b = two_runs
    ws = tmp_path / "ws"
    runs = [_copy(a, ws / "runs" / "a"), _copy(b, ws / "runs" / "b")]
    build_ensemble(runs, ws / "ensembles" / "ab")
    stored = json.loads((ws / "ensembles" / "ab" / "ensemble.json").read_text())["members"][0]["run_dir"]
    assert not Path(stored).is_absolute()  # relative to the ensemble dir
    shutil.move(ws, tmp_path / "moved")
    ens = load_ensemble(tmp_path / "moved" / "ensembles" / "ab")
    assert [r.run_dir.resolve() for r in ens.members] == [(tmp_path / "moved" / "runs" / n).resolve() for n in "ab"]


def test_delete_ensemble_removes_only_a_saved_ensemble(two_runs, tmp_path) -> None:
    from classifier.ensemble import delete_ensemble

    a, b = two_runs
    with pytest.raises(RunError, match="is not a saved ensemble"):
        delete_ensemble(a)  # a run dir: refused, nothing removed
    assert (a / "model.safetensors").is_file()
    build_ensemble([a, b], tmp_path / "ens")
    delete_ensemble(tmp_path / "ens")
    assert not (tmp_path / "ens").exists() and (a / "model.safetensors").is_file()
