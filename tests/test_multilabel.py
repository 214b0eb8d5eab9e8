"""Multi-label datasets end to end: the CSV layouts and every bad input of the issue (each a clear error naming the
rows), the iterative split, the metrics against values worked out by hand, the loss, mixup and thresholds, and a
run trained, saved, reloaded, predicted, evaluated, explained, exported and ensembled through Python and the CLI.

Training here is `simple_cnn` at 32-48 px on a few dozen generated scenes: these tests check that the multi-label
path works and is scored right, not how well it learns (bench/multilabel.py measures that).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from classifier.cli import main
from classifier.data.dataset import check_trainable, index_dataset, load_dataset, save_version
from classifier.data.demo import MULTILABEL_CSV, make_multilabel_demo
from classifier.data.multilabel import label_matrix
from classifier.data.splits import assign_splits
from classifier.errors import ClassifierError, DatasetError
from classifier.metrics import compute_metrics, label_confusion, multilabel_gallery, tune_thresholds
from classifier.task import detect_separator, label_separator, split_labels

FAST = dict(backbone="simple_cnn", weights="none", img_size=32, batch_size=8, num_workers=0, device="cpu")


def _img(path: Path, colour=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 24), colour).save(path)


def _csv_dataset(root: Path, text: str, n_images: int = 8) -> Path:
    """`n_images` distinct small PNGs img/0.png ... and the CSV `text` beside them."""
    for i in range(n_images):
        _img(root / "img" / f"{i}.png", (i * 30 % 256, 100, 200 - i * 20 % 200))
    (root / "labels.csv").write_text(text)
    return root / "labels.csv"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> tuple[Path, Path]:
    """48 multi-label demo scenes at 48 px and their per-shape masks."""
    root = tmp_path_factory.mktemp("ml")
    data = make_multilabel_demo(root / "data", n_images=48, size=48, seed=2, masks_out=root / "masks")
    return data, root / "masks"


@pytest.fixture(scope="module")
def ml_run(scenes, tmp_path_factory) -> Path:
    """A finished multi-label run (2 epochs, thresholds tuned) through `python -m classifier train`."""
    out = tmp_path_factory.mktemp("mlrun") / "run"
    code = main(["train", "--data", str(scenes[0]), "--backbone", "simple_cnn", "--weights", "none", "--img-size",
                 "32", "--epochs", "2", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--tune-thresholds",
                 "--mixup", "0.2", "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    return out


# --- data: layouts ---------------------------------------------------------------------------------------------------


def test_label_separators_and_helpers():
    assert detect_separator(["a b", "c"]) == " " and detect_separator(["red car;", "bus"]) == ";"
    assert detect_separator(["red car|bus", "a;b"]) == "|"
    assert split_labels("red car;", ";") == ["red car"] and split_labels("  a   b ", " ") == ["a", "b"]
    assert label_separator(["a", "b"]) == " " and label_separator(["red car", "b"]) == ";"
    assert label_separator(["red car", "x;y"]) == "|"


@pytest.mark.parametrize(
    "text",
    [
        "path,labels\nimg/0.png,cat dog\nimg/1.png,dog\nimg/2.png,cat\nimg/3.png,\nimg/4.png,cat dog\nimg/5.png,dog\n",
        "path,labels\nimg/0.png,cat;dog\nimg/1.png,dog\nimg/2.png,cat\nimg/3.png,\nimg/4.png,dog|cat\nimg/5.png,dog\n".replace(
            "dog|cat", "cat;dog"
        ),
        "path,cat,dog\nimg/0.png,1,1\nimg/1.png,0,1\nimg/2.png,1,0\nimg/3.png,0,0\nimg/4.png,1,1\nimg/5.png,0,1\n",
    ],
    ids=["spaces", "semicolons", "one-hot"],
)
def test_labels_column_and_one_hot_make_a_multilabel_index(tmp_path, text):
    index = index_dataset(_csv_dataset(tmp_path, text))
    assert index.task == "multilabel" and index.classes == ["cat", "dog"]
    assert label_matrix(index).tolist() == [[1, 1], [0, 1], [1, 0], [0, 0], [1, 1], [0, 1]]
    check_trainable(index)
    s = index.summary()
    assert s["labels"]["no_label"] == 1 and s["labels"]["labels_per_image"] == [1, 3, 2]
    assert s["labels"]["cooccurrence"] == [[3, 2], [2, 4]] and s["labels"]["images_per_label"] == {"cat": 3, "dog": 4}


def test_label_names_with_spaces_and_a_repeated_row(tmp_path):
    text = "path,labels\nimg/0.png,red car|bus\nimg/1.png,red car\nimg/2.png,bus|red car\nimg/1.png,red car\n"
    index = index_dataset(_csv_dataset(tmp_path, text + "img/3.png,bus\n"))
    assert index.classes == ["bus", "red car"] and len(index.samples) == 4
    assert any("repeated a path" in w for w in index.warnings)


def test_single_label_csv_stays_single_label(tmp_path):
    index = index_dataset(_csv_dataset(tmp_path, "path,label\nimg/0.png,a\nimg/1.png,a\nimg/2.png,b\nimg/3.png,b\n"))
    assert index.task == "single-label" and [s.label for s in index.samples] == [0, 0, 1, 1]
    assert "labels" not in index.summary()


# --- data: every bad input of the issue, each naming its rows ---------------------------------------------------


def test_a_label_with_fewer_than_two_images_names_its_row(tmp_path):
    index = index_dataset(_csv_dataset(tmp_path, "path,labels\nimg/0.png,a b\nimg/1.png,a\nimg/2.png,a c\n"
                                                 "img/3.png,c\n"))  # fmt: skip
    with pytest.raises(DatasetError, match=r"fewer than two images: 'b' line 2 \(img/0.png\)"):
        check_trainable(index)


def test_a_label_only_in_validation_names_its_rows(tmp_path):
    text = ("path,labels,split\nimg/0.png,a,train\nimg/1.png,a,val\nimg/2.png,a b,val\nimg/3.png,b,val\n"
            "img/4.png,a,train\n")  # fmt: skip
    index = index_dataset(_csv_dataset(tmp_path, text))
    with pytest.raises(DatasetError, match=r"label 'b' has no training image: it is only in val lines 4, 5"):
        check_trainable(index)


def test_the_same_path_with_different_labels_names_both_lines(tmp_path):
    csv = _csv_dataset(tmp_path, "path,labels\nimg/0.png,a\nimg/1.png,b\nimg/0.png,a b\n")
    with pytest.raises(DatasetError, match=r"lines 2 and 4: 'img/0.png' is listed with labels \{a\} and with \{a, b\}"):
        index_dataset(csv)


def test_an_empty_labels_column_throughout_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="labels column is empty in every row"):
        index_dataset(_csv_dataset(tmp_path, "path,labels\nimg/0.png,\nimg/1.png,\n"))


def test_a_one_hot_cell_that_is_not_0_or_1_names_line_and_column(tmp_path):
    csv = _csv_dataset(tmp_path, "path,cat,dog\nimg/0.png,1,0\nimg/1.png,0,yes\nimg/2.png,1,1\n")
    with pytest.raises(DatasetError, match=r"line 3, column 'dog': 'yes' is not 0 or 1"):
        index_dataset(csv)


def test_a_header_that_is_neither_layout_says_what_is_needed(tmp_path):
    with pytest.raises(DatasetError, match="path,label .* path,labels .* one 0/1 column per label"):
        index_dataset(_csv_dataset(tmp_path, "file,class\nimg/0.png,cat\n"))


def test_the_cli_prints_one_error_line_and_exits_2_leaving_nothing(tmp_path, capsys):
    csv = _csv_dataset(tmp_path, "path,labels\nimg/0.png,a\nimg/1.png,b\nimg/0.png,b\n")
    code = main(["train", "--data", str(csv), "--out", str(tmp_path / "run"), *_flags(FAST)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "lines 2 and 4" in err[0]
    assert not (tmp_path / "run").exists()


# --- split --------------------------------------------------------------------------------------------------------


def test_iterative_split_puts_every_label_with_two_images_in_train_and_val(tmp_path):
    rng = random.Random(0)
    names = [f"l{k}" for k in range(8)]
    rows = []
    for i in range(60):
        labels = rng.sample(names[:4], rng.randint(0, 2)) + (["l4"] if i < 2 else []) + (["l5"] if 10 <= i < 13 else [])
        rows.append(f"img/{i}.png,{' '.join(labels)}")
    index = index_dataset(_csv_dataset(tmp_path, "path,labels\n" + "\n".join(rows) + "\n", n_images=60))
    state = random.getstate(), np.random.get_state()[1].tolist(), torch.random.get_rng_state().tolist()
    splits = assign_splits(index, 0.2, 0.0, seed=5)
    assert state == (random.getstate(), np.random.get_state()[1].tolist(), torch.random.get_rng_state().tolist())
    assert splits == assign_splits(index, 0.2, 0.0, seed=5) and splits != assign_splits(index, 0.2, 0.0, seed=6)
    y = label_matrix(index)
    for c, name in enumerate(index.classes):
        where = {sp for sp, row in zip(splits, y) if row[c]}
        assert where == {"train", "val"}, name  # l4 has 2 images, l5 has 3: both still in both splits
    assert 0.15 <= splits.count("val") / len(splits) <= 0.3


# --- metrics against hand-computed values -------------------------------------------------------------------------

Y = [[1, 0], [1, 1], [0, 1], [0, 0], [1, 0]]
P = [[0.9, 0.2], [0.6, 0.7], [0.4, 0.3], [0.1, 0.6], [0.3, 0.8]]


def test_multilabel_metrics_match_hand_computed_values():
    # At 0.5 the predictions are [1,0] [1,1] [0,0] [0,1] [0,1].
    # a: tp 2, fp 0, fn 1, tn 2 -> P 1, R 2/3, F1 0.8. b: tp 1, fp 2, fn 1, tn 1 -> P 1/3, R 1/2, F1 0.4.
    # micro: TP 3, FP 2, FN 2 -> F1 0.6; exact rows 2 of 5; wrong bits 4 of 10.
    # AP a: ranking .9+ .6+ .4- .3+ .1- -> (1 + 1 + 3/4) / 3; AP b: .8- .7+ .6- .3+ .2- -> (1/2 + 2/4) / 2 = 0.5.
    # ROC AUC a: 5 of 6 pairs ordered right; b: 3 of 6. Label-ranking AP per row: 1, 1, 1/2, 1 (no labels), 1/2.
    m = compute_metrics(np.array(Y), np.array(P), ["a", "b"])
    assert m["task"] == "multilabel" and m["threshold_source"] == "default" and m["thresholds"] == [0.5, 0.5]
    a, b = m["per_label"]
    assert (a["tp"], a["fp"], a["fn"], a["tn"], a["support"]) == (2, 0, 1, 2, 3)
    assert (b["tp"], b["fp"], b["fn"], b["tn"], b["support"]) == (1, 2, 1, 1, 2)
    assert a["precision"] == 1 and a["recall"] == pytest.approx(2 / 3) and a["f1"] == pytest.approx(0.8)
    assert b["precision"] == pytest.approx(1 / 3) and b["recall"] == 0.5 and b["f1"] == pytest.approx(0.4)
    assert m["micro_f1"] == pytest.approx(0.6) and m["macro_f1"] == pytest.approx(0.6)
    assert m["subset_accuracy"] == pytest.approx(0.4) and m["hamming_loss"] == pytest.approx(0.4)
    assert a["average_precision"] == pytest.approx(2.75 / 3) and b["average_precision"] == pytest.approx(0.5)
    assert m["map"] == pytest.approx((2.75 / 3 + 0.5) / 2)
    assert a["roc_auc"] == pytest.approx(5 / 6) and b["roc_auc"] == pytest.approx(0.5)
    assert m["label_ranking_ap"] == pytest.approx(0.8)
    bce = -np.mean([np.log(p) if y else np.log(1 - p) for yr, pr in zip(Y, P) for y, p in zip(yr, pr)])
    assert m["log_loss"] == pytest.approx(bce)
    assert m["label_confusion"] == [[0, 1], [0, 0]]  # image 5: a missed while b predicted wrongly
    assert "at_default" not in m and json.dumps(m, allow_nan=False)


def test_tuned_thresholds_maximise_f1_and_both_are_reported():
    # a: predicting p >= 0.3 gives tp 3 fp 1 (F1 0.857, the best); halfway to the next lower p (0.1): 0.2.
    # b: p >= 0.3 gives tp 2 fp 2 (F1 0.667, the best); halfway to 0.2: 0.25.
    t = tune_thresholds(np.array(Y), np.array(P))
    assert t == pytest.approx([0.2, 0.25])
    m = compute_metrics(np.array(Y), np.array(P), ["a", "b"], thresholds=t, tuned=True)
    assert m["threshold_source"] == "tuned" and m["per_label"][0]["f1"] == pytest.approx(6 / 7)
    assert m["at_default"]["per_label"][0]["f1"] == pytest.approx(0.8) and m["at_default"]["micro_f1"] == 0.6
    assert len(m["threshold_warnings"]) == 2 and "b: 2 validation positives" in m["threshold_warnings"][1]


def test_label_confusion_and_galleries():
    y, p = np.array(Y), np.array(P)
    assert label_confusion(y, (p >= 0.5).astype(int)).tolist() == [[0, 1], [0, 0]]
    fp = multilabel_gallery(y, p, label=1, outcome="false positives")
    assert [r["index"] for r in fp] == [4, 3]  # worst first: p 0.8 then 0.6 for a label that is not there
    assert [r["index"] for r in multilabel_gallery(y, p, label=0, outcome="false negatives")] == [4]
    assert [r["index"] for r in multilabel_gallery(y, p, outcome="correct")] == [1, 0]


# --- loss, mixup, thresholds in training ----------------------------------------------------------------------


def test_multilabel_loss_pos_weight_and_mixup():
    from classifier.training.callbacks import MixupCutmix
    from classifier.training.setup import MultiLabelLoss, positive_weights

    train = np.array([[1, 0, 1], [0, 0, 1], [0, 1, 1], [0, 0, 1]], dtype=np.float32)
    assert positive_weights(train).tolist() == [3.0, 3.0, 1.0]  # label 2 is on every image: nothing to balance
    logits, target = torch.tensor([[2.0, -1.0, 0.5]]), torch.tensor([[1.0, 0.0, 1.0]])
    bce = MultiLabelLoss("bce", 0.0, None)(logits, target)
    assert bce == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(logits, target))
    smoothed = MultiLabelLoss("bce", 0.2, None)(logits, target)
    assert smoothed == pytest.approx(
        torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([[0.9, 0.1, 0.9]]))
    )
    assert torch.isfinite(MultiLabelLoss("asl", 0.0, torch.tensor([1.0, 2.0, 1.0]))(logits, target))
    mix = MixupCutmix(mixup=0.4, cutmix=0.0, label_smoothing=0.1, num_classes=3, multi_label=True)
    state = type("S", (), {})()
    state.x, state.y = torch.rand(4, 3, 8, 8), torch.tensor(train)
    mix.on_batch_start(state)
    lam = float(state.target[0, 0])  # image 0 has label 0, image 3 (its partner) has not
    assert torch.allclose(state.target, lam * torch.tensor(train) + (1 - lam) * torch.tensor(train).flip(0), atol=1e-6)


def test_single_label_data_refuses_multilabel_settings(tmp_path, demo_dir):
    from classifier.training import TrainConfig, fit

    with pytest.raises(ClassifierError, match="multilabel_loss, tune_thresholds applies to multi-label datasets"):
        fit(TrainConfig(data=str(demo_dir), multilabel_loss="asl", tune_thresholds=True, **FAST), tmp_path / "r")


def test_multilabel_data_refuses_class_imbalance_settings(tmp_path, scenes):
    from classifier.training import TrainConfig, fit

    with pytest.raises(ClassifierError, match="use --pos-weight auto"):
        fit(TrainConfig(data=str(scenes[0]), imbalance="sampler", **FAST), tmp_path / "r")


# --- a run end to end ------------------------------------------------------------------------------------------


def _position_image(side: int = 32) -> np.ndarray:
    """(side, side, 3) uint8 whose red is each pixel's column and green its row, 0-255: the spans of red and green
    in a crop of it give the crop's width and height as shares of the image."""
    ramp = np.linspace(0, 255, side).round().astype(np.uint8)
    return np.stack([np.tile(ramp, (side, 1)), np.tile(ramp[:, None], (1, side)), np.zeros((side, side), np.uint8)], -1)


def _crop_areas(prep, data_config: dict, draws: int = 60) -> list[float]:
    """Share of the image each training crop of `prep` (uint8 batches in, normalised batches out) kept."""
    x = torch.from_numpy(_position_image()).permute(2, 0, 1)[None]
    mean, std = (torch.tensor(data_config[k]).view(3, 1, 1) for k in ("mean", "std"))
    areas = []
    for _ in range(draws):
        y = prep(x.clone())[0] * std + mean  # back to 0..1
        width, height = (float(c.max() - c.min()) for c in (y[0], y[1]))
        areas.append(width * height)
    return areas


@pytest.mark.parametrize("cache", ["memory", "off"])
def test_training_crops_keep_most_of_a_multilabel_image(scenes, demo_dir, cache):
    """Labels name everything in a multi-label image, so a crop must not cut objects out: every training crop of a
    multi-label run keeps about 85 % or more of the image, where a single-label run's crops go down to half."""
    from torchvision.transforms.functional import to_pil_image

    from classifier.models.factory import build_model
    from classifier.training import TrainConfig
    from classifier.training.setup import TrainingSetup, split_data

    def crop_areas(data: Path) -> list[float]:
        cfg = TrainConfig(data=str(data), **FAST, epochs=1, mode="finetune", augment="light", cache=cache).resolved()
        built = build_model(cfg.backbone, 2, weights="none", img_size=32)
        setup = TrainingSetup(cfg, split_data(load_dataset(cfg.data), cfg), built.model, built.data_config)
        setup.prepare(lambda *_: None, validate=False)
        if cache == "off":  # decoded per image: the dataset's torchvision transform of a PIL image
            assert setup.train_prep is None
            prep = lambda x: setup.train_ds.transform(to_pil_image(x[0]))[None]  # noqa: E731
        else:  # cached uint8 squares through the tensor pipeline
            prep = setup.train_prep
        torch.manual_seed(0)
        return _crop_areas(prep, built.data_config)

    multi, single = crop_areas(scenes[0]), crop_areas(demo_dir)
    assert min(multi) > 0.75, sorted(multi)[:5]
    assert min(single) < 0.6, sorted(single)[:5]


def test_the_data_pages_augmentation_preview_shows_the_multilabel_crops():
    from classifier.data.transforms import augment_preview

    img = Image.fromarray(_position_image())

    def areas(multilabel: bool) -> list[float]:
        views = augment_preview(img, "light", n=40, size=32, multilabel=multilabel)
        return [float(np.ptp(v[..., 0]) * np.ptp(v[..., 1])) for v in views]

    assert min(areas(True)) > 0.75
    assert min(areas(False)) < 0.6


def test_run_files_record_the_task_and_the_thresholds(ml_run):
    from classifier import rundir

    config, metrics = rundir.read_config(ml_run), rundir.read_metrics(ml_run)
    assert config["task"] == "multilabel" and config["train"]["tune_thresholds"] is True
    assert metrics["task"] == "multilabel" and metrics["threshold_source"] == "tuned"
    assert set(metrics) >= {"map", "micro_f1", "macro_f1", "subset_accuracy", "hamming_loss", "label_ranking_ap",
                            "per_label", "thresholds", "at_default"}  # fmt: skip
    assert rundir.read_split(ml_run)[0]["labels"] and "val_map" in rundir.read_history(ml_run).columns
    vp = rundir.read_val_predictions(ml_run)
    assert vp.task == "multilabel" and vp.y_true.shape == vp.probs.shape and vp.thresholds == metrics["thresholds"]
    again = compute_metrics(vp.y_true, vp.probs, vp.class_names, thresholds=vp.thresholds)
    assert again["map"] == pytest.approx(metrics["map"], abs=1e-5)  # the CSV's 6 decimals give the same mAP


def test_predict_reload_and_cli_output(ml_run, scenes, capsys):
    from classifier.predict import load_run, predict_paths

    run = load_run(ml_run)
    thresholds = run.thresholds
    image = sorted(scenes[0].glob("*.png"))[0]
    out = predict_paths(run, [str(image)])[0]
    assert set(out) == {"path", "labels", "probabilities"} and set(out["probabilities"]) == set(run.class_names)
    above = {c for c, p in out["probabilities"].items() if p >= thresholds[run.class_names.index(c)]}
    assert {c for c, _ in out["labels"]} == above
    assert [p for _, p in out["labels"]] == sorted((p for _, p in out["labels"]), reverse=True)
    code = main(["predict", "--run", str(ml_run), str(image), str(image.with_name("missing.png"))])
    assert code == 2  # an unreadable image is reported on its line and in the exit code; the others still print
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert lines[0] == out and "error" in lines[1]
    fast = load_run(ml_run, backend="onnx")
    assert np.allclose(list(predict_paths(fast, [str(image)])[0]["probabilities"].values()),
                       list(out["probabilities"].values()), atol=1e-4)  # fmt: skip


def test_evaluate_export_and_report(ml_run, tmp_path, capsys):
    from classifier.export import export_run
    from classifier.report import report_html

    assert main(["evaluate", "--run", str(ml_run)]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["task"] == "multilabel" and m["thresholds"] == pytest.approx(json.loads(
        (ml_run / "metrics.json").read_text())["thresholds"])  # fmt: skip
    report = export_run(ml_run, "onnx", tmp_path / "b.zip", bench_seconds=0.2)
    assert report.status == "ok" and report.check.top1_agreement == 1.0 and report.check.max_prob_diff < 1e-3
    # checked on every validation image: the run's own exact-match accuracy is what PyTorch gives here
    assert report.headline_accuracy == pytest.approx(m["subset_accuracy"], abs=1e-4) == report.pytorch_accuracy
    import zipfile

    with zipfile.ZipFile(tmp_path / "b.zip") as z:
        cfg = json.loads(z.read("b/config.json"))
        card = z.read("b/MODEL_CARD.md").decode()
    assert cfg["task"] == "multilabel" and len(cfg["thresholds"]) == 5 and "mean average precision" in card
    html = report_html(ml_run)
    assert "mAP (macro AP)" in html and "Which label is predicted in place of which" in html


def test_explain_each_label_as_its_own_target(ml_run, scenes):
    from classifier.explain import attribute
    from classifier.predict import load_run

    run = load_run(ml_run)
    image = sorted(scenes[0].glob("*.png"))[0]
    maps = {name: attribute(run, image, "saliency", name) for name in run.class_names[:2]}
    for name, a in maps.items():
        assert a.target_name == name and 0.0 <= a.extra["probability"] <= 1.0
    probs = {n: a.extra["probability"] for n, a in maps.items()}
    assert sum(probs.values()) != pytest.approx(1.0)  # sigmoids, not a softmax over two labels
    assert not np.allclose(maps[run.class_names[0]].map, maps[run.class_names[1]].map)


def test_ensemble_of_multilabel_runs_and_mixed_tasks_refused(ml_run, two_runs, tmp_path):
    import shutil

    from classifier.ensemble import build_ensemble, load_ensemble

    other = tmp_path / "copy"
    shutil.copytree(ml_run, other)
    metrics = build_ensemble([ml_run, other], tmp_path / "ens")
    assert metrics["task"] == "multilabel" and all("map" in m for m in metrics["members"])
    ens = load_ensemble(tmp_path / "ens")
    assert ens.thresholds == [0.5] * 5
    with pytest.raises(ClassifierError, match="cannot join an ensemble"):
        build_ensemble([ml_run, two_runs[0]], tmp_path / "mixed")


def test_linear_probe_resume_and_lr_finder_on_multilabel_data(scenes, tmp_path):
    from classifier.training import Callback, TrainConfig, fit
    from classifier.training.lr_find import lr_find

    steps = []

    class Count(Callback):
        def on_batch_end(self, s):
            steps.append(s.step)

    cfg = TrainConfig(data=str(scenes[0]), epochs=3, lr=3e-3, pos_weight="auto", multilabel_loss="asl", **FAST)
    stopped = fit(cfg, tmp_path / "run", [Count()], should_cancel=lambda: len(steps) >= 6)
    assert stopped.status == "cancelled"
    resumed = fit(None, tmp_path / "run", resume=True)
    assert resumed.status == "completed" and resumed.metrics["task"] == "multilabel"
    fresh = fit(cfg, tmp_path / "fresh")
    assert resumed.metrics["map"] == pytest.approx(fresh.metrics["map"])  # the same run as one never stopped
    probe = fit(TrainConfig(data=str(scenes[0]), mode="linear", epochs=2, **FAST), tmp_path / "probe")
    assert probe.metrics["task"] == "multilabel" and probe.history[-1]["val_map"] > 0
    found = lr_find(TrainConfig(data=str(scenes[0]), **FAST), steps=8)
    assert len(found.lrs) >= 4 and np.isfinite(found.losses).all()


def test_dataset_version_relabels_a_multilabel_image(tmp_path):
    csv = _csv_dataset(tmp_path, "path,labels\nimg/0.png,a\nimg/1.png,a b\nimg/2.png,b\nimg/3.png,a b\n")
    v = save_version(str(csv), edits=_edits({"img/0.png": "a;b"}))
    index = load_dataset(str(csv), v)
    assert label_matrix(index)[0].tolist() == [1, 1] and index.relabelled["img/0.png"] == ("a", "a;b")
    with pytest.raises(DatasetError, match="'c', which is not a label"):
        save_version(str(csv), edits=_edits({"img/2.png": "b;c"}))


def test_demo_scenes_have_one_mask_per_label(scenes):
    data, masks = scenes
    index = load_dataset(str(data))
    assert (data / MULTILABEL_CSV).is_file() and index.task == "multilabel" and len(index.classes) == 5
    for s in index.samples[:10]:
        for c in index.label_indices(s):
            mask = np.asarray(Image.open(masks / index.classes[c] / s.path))
            assert mask.max() == 255 and 0 < (mask > 127).mean() < 0.25
    counts = label_matrix(index).sum(axis=1)
    assert set(counts.tolist()) <= {1, 2, 3} and len(set(counts.tolist())) == 3


def _edits(relabel: dict[str, str]):
    from classifier.data.versions import Edits

    return Edits(relabel=relabel)


def _flags(settings: dict) -> list[str]:
    out = []
    for k, v in settings.items():
        out += [f"--{'workers' if k == 'num_workers' else k.replace('_', '-')}", str(v)]
    return out


@pytest.mark.slow
def test_search_on_map_through_the_job_system(scenes, capsys):
    """Two real trials (simple_cnn, 32 px, 1 epoch) queued through the local executor, ranked by mean average
    precision: each trial's value is its run's mAP, which the run store's summary carries for a multi-label run."""
    from classifier.store import RunStore

    code = main(["search", "--data", str(scenes[0]), "--backbone", "simple_cnn", "--weights", "none", "--img-size",
                 "32", "--epochs", "1", "--workers", "0", "--device", "cpu", "--sampler", "random", "--trials", "2",
                 "--search-lr", "1e-3", "3e-3", "--metric", "map", "--no-prune", "--name", "ml"])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(out.out)
    assert result["metric"] == "map" and [t["state"] for t in result["trials"]] == ["completed", "completed"]
    for t in result["trials"]:
        row = RunStore().get(t["run_id"])
        assert row["metrics"]["task"] == "multilabel" and row["metrics"]["map"] == t["value"]
        assert row["history"][-1]["val_map"] == pytest.approx(t["intermediate"]["1"])
