"""The command line end to end: demo-data → summary → train → evaluate → predict, and its error exits."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from classifier.cli import main


def _run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "classifier", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


@pytest.mark.slow
def test_cli_end_to_end(tmp_path):
    data, masks, run = tmp_path / "demo", tmp_path / "masks", tmp_path / "run"
    r = _run("demo-data", "--out", str(data), "--masks-out", str(masks), "--per-class", "12", "--seed", "2")
    assert r.returncode == 0, r.stderr
    assert len(list(data.rglob("*.png"))) == 60 and len(list(masks.rglob("*.png"))) == 60

    r = _run("summary", "--data", str(data))
    assert r.returncode == 0 and "5 classes" in r.stdout

    r = _run(
        "train",
        "--data",
        str(data),
        "--backbone",
        "efficientnet_lite0",
        "--mode",
        "linear",
        "--augment",
        "none",
        "--img-size",
        "96",
        "--epochs",
        "20",
        "--out",
        str(run),
    )
    assert r.returncode == 0, r.stderr
    final = json.loads(r.stdout.strip().splitlines()[-1])
    assert final["status"] == "completed" and final["accuracy"] > 0.3
    assert "img/s" in r.stderr and "ETA" in r.stderr  # the progress bar

    r = _run("evaluate", "--run", str(run), "--split", "val")
    assert r.returncode == 0, r.stderr
    metrics = json.loads(r.stdout)
    assert metrics["accuracy"] == pytest.approx(final["accuracy"])

    img = next((data / "star").glob("*.png"))
    r = _run("predict", "--run", str(run), str(img), str(data / "circle"), "--top-k", "2")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(lines) == 1 + 12
    assert lines[0]["path"] == str(img) and lines[0]["label"] in metrics["class_names"]
    assert len(lines[0]["top_k"]) == 2 and lines[0]["probability"] == lines[0]["top_k"][0][1]


def test_cli_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not exist" in err and len(err.strip().splitlines()) == 1

    (tmp_path / "ds" / "a").mkdir(parents=True)
    (tmp_path / "ds" / "b").mkdir(parents=True)
    from PIL import Image

    for c in "ab":
        for i in range(2):
            Image.new("RGB", (8, 8), (i * 100, 0, 0)).save(tmp_path / "ds" / c / f"{i}.png")
    assert main(["train", "--data", str(tmp_path / "ds"), "--backbone", "resnet19", "--out", str(tmp_path / "r")]) == 2
    assert "unknown backbone 'resnet19'" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "--data",
                str(tmp_path / "ds"),
                "--weights",
                str(tmp_path / "w.pt"),
                "--out",
                str(tmp_path / "r2"),
            ]
        )
        == 2
    )
    assert "safetensors" in capsys.readouterr().err
    assert main(["predict", "--run", str(tmp_path / "nope"), "x.png"]) == 2
    assert "not a run dir" in capsys.readouterr().err


def test_demo_data_default_goes_to_workspace_and_is_reused(tmp_path, capsys):
    import os
    from pathlib import Path

    assert main(["demo-data"]) == 0
    out = Path(capsys.readouterr().out.split("ready in ")[1].strip())
    assert out.parent == Path(os.environ["CLASSIFIER_WORKSPACE"]) / "datasets"
    pngs = sorted(out.rglob("*.png"))
    assert len(pngs) == 5 * 60
    masks = Path(os.environ["CLASSIFIER_WORKSPACE"]) / "masks" / out.name
    assert len(list(masks.rglob("*.png"))) == 300
    before = pngs[0].stat().st_mtime_ns
    assert main(["demo-data"]) == 0  # second call reuses it
    assert pngs[0].stat().st_mtime_ns == before
