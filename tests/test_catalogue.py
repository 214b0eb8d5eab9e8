"""The bad-input catalogue (../shared/docs/BAD_INPUTS.md, summarised in docs/bad_inputs.md): one test per row that
earlier test files did not already pin to the outcome the user is owed. Test names start with the row number.

Every input is generated here; rows 14 and 20 use two AppTest instances, which are two Streamlit sessions.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import EpsImagePlugin, Image
from safetensors.torch import save_file
from streamlit.testing.v1 import AppTest

from classifier.cli import main
from classifier.errors import DatasetError, WeightsError

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")
TIMEOUT = 60  # seconds per AppTest script run: the first one imports torch and timm


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def noisy(seed: int, size: tuple[int, int] = (24, 24)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def zip_of(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def open_data_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.switch_page("app_pages/data.py").run()
    return at


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} if root.exists() else set()


# --- row 1: upload over the configured limit ------------------------------------------------------------------------


def test_row01_upload_over_limit_refused_before_extraction_and_message_states_limit(tmp_path) -> None:
    from streamlit import config

    from classifier.workspace import datasets_dir, workspace_dir

    big = zip_of({f"cats/{i}.png": os.urandom(300_000) for i in range(4)})  # ~1.2 MB, stored incompressible
    assert len(big) > 1024 * 1024
    before = config.get_option("server.maxUploadSize")
    config.set_option("server.maxUploadSize", 1)  # MB; the Data page reads the same option the server enforces
    try:
        at = open_data_page()
        at.radio(key="w_source").set_value("Upload a .zip").run()
        assert "up to 1 MB" in at.file_uploader[0].label
        at.file_uploader[0].upload("big.zip", big, "application/zip")
        at.run()
    finally:
        config.set_option("server.maxUploadSize", before)
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert any("big.zip" in e and "the limit is 1.0 MB" in e for e in errors), errors
    assert files_under(datasets_dir()) == set()  # nothing extracted
    assert [p.name for p in workspace_dir().glob("*.zip")] == []  # no temporary copy left behind
    # The server-side refusal (HTTP 413 from Streamlit's upload route) is tests/test_server.py.


# --- row 2: unsafe entry names, listed in the app ---------------------------------------------------------------------


def test_row02_unsafe_zip_entries_listed_on_data_page_and_nothing_written_outside() -> None:
    from classifier.workspace import workspace_dir

    png = [encode(noisy(i), "PNG") for i in range(6)]
    entries = {f"pets/{c}/{i}.png": png[i + 3 * k] for k, c in enumerate(("cats", "dogs")) for i in range(3)}
    entries.update({"../escape.png": png[0], "/abs.png": png[1], "C:/drive.png": png[2]})
    at = open_data_page()
    at.radio(key="w_source").set_value("Upload a .zip").run()
    at.file_uploader[0].upload("evil.zip", zip_of(entries), "application/zip")
    at.run()
    assert not at.exception, at.exception
    assert any("3 archive entries were refused" in w.value for w in at.warning), [w.value for w in at.warning]
    refused = next(df.value for df in at.dataframe if "entry" in df.value.columns)
    assert dict(zip(refused["entry"], refused["reason"])).keys() == {"../escape.png", "/abs.png", "C:/drive.png"}
    dataset = Path(at.session_state["dataset_path"])
    assert files_under(dataset) == {f"pets/{c}/{i}.png" for c in ("cats", "dogs") for i in range(3)}
    workspace = workspace_dir()
    outside = {p for p in files_under(workspace) if not (workspace / p).resolve().is_relative_to(dataset.resolve())}
    assert not any("escape" in p or "abs" in p or "drive" in p for p in outside), outside
    assert not (workspace.parent / "escape.png").exists() and not Path("/abs.png").exists()


# --- rows 4 and 5 through the Data page: a zip bomb and untrainable archives, nothing lost -------------------------


def _fingerprint(root: Path) -> dict[str, bytes]:
    return {p: (root / p).read_bytes() for p in files_under(root)}


def _upload(at: AppTest, name: str, data: bytes) -> list[str]:
    at.radio(key="w_source").set_value("Upload a .zip").run()
    at.file_uploader[0].upload(name, data, "application/zip")
    at.run()
    assert not at.exception, at.exception
    return [e.value for e in at.error]


def test_row04_zip_bomb_upload_stops_with_clear_error_no_temp_files_earlier_data_untouched() -> None:
    from classifier.data.demo import make_demo_dataset
    from classifier.workspace import datasets_dir, workspace_dir

    earlier = make_demo_dataset(datasets_dir() / "earlier", n_per_class=3, size=24, seed=1, classes=("star", "cross"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("cats/ok.png", encode(noisy(1), "PNG"))
        with zf.open("cats/zeros.bmp", "w", force_zip64=True) as member:  # 64 MB of zeros, ~64 kB compressed
            for _ in range(64):
                member.write(bytes(1024 * 1024))
    bomb = buf.getvalue()
    assert len(bomb) < 200_000
    at = open_data_page()
    before = _fingerprint(workspace_dir())
    errors = _upload(at, "bomb.zip", bomb)
    assert any("bomb.zip" in e and "compression ratio" in e and "possible zip bomb" in e for e in errors), errors
    assert _fingerprint(workspace_dir()) == before  # no partial dataset, no temporary copy, earlier data as it was
    assert at.session_state["dataset_path"] is None
    assert files_under(earlier)  # still there


def test_bad_zip_error_names_the_upload_only_and_hides_the_previous_dataset() -> None:
    from classifier.data.demo import make_demo_dataset
    from classifier.workspace import datasets_dir

    earlier = make_demo_dataset(datasets_dir() / "earlier", n_per_class=3, size=24, seed=1, classes=("star", "cross"))
    at = open_data_page()
    at.selectbox[0].set_value(earlier.name).run()  # the workspace dataset, shown below the picker
    assert [h.value for h in at.header] == ["Dataset: earlier"]
    errors = _upload(at, "holiday photos.zip", b"PK\x03\x04 this is not really a zip")
    assert len(errors) == 1 and errors[0].startswith("holiday photos.zip"), errors
    assert ".tmp" not in errors[0] and "tmp" not in errors[0].replace("holiday photos.zip", ""), errors
    assert [h.value for h in at.header] == []  # the earlier dataset is not shown under the error as if it were new


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"notes/readme.txt": b"no pictures here"}, "no usable images found"),
        ({f"only/{i}.png": i for i in range(3)}, "only one class ('only') has images"),
        ({**{f"cats/{i}.png": i for i in range(3)}, "dogs/0.png": 9}, "class 'dogs' has only one image"),
    ],
    ids=["no-images", "one-class", "single-image-class"],
)
def test_row05_untrainable_archive_gets_a_cannot_train_message_naming_the_problem(entries, message) -> None:
    data = zip_of({k: encode(noisy(v), "PNG") if isinstance(v, int) else v for k, v in entries.items()})
    at = open_data_page()
    errors = _upload(at, "mine.zip", data)
    assert any(message in e and "mine" in e for e in errors), errors
    assert not any("Traceback" in e for e in errors)


# --- row 6: decompression bomb in a dataset, memory measured in a fresh process --------------------------------------

BOMB_SCRIPT = textwrap.dedent(
    """
    import json, resource, struct, sys, zlib
    from pathlib import Path
    import numpy as np
    from PIL import Image
    from classifier.data.dataset import index_dataset

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    root = Path(sys.argv[1])
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (16, 16), (40 * i, 90 if cls == "a" else 200, 10)).save(root / cls / f"{i}.png")
    # 20000 x 20000 RGB: 1.2 GB once decoded. A complete zlib stream, so only the pixel limit can stop it.
    comp, row = zlib.compressobj(1), b"\\x00" + b"\\x00" * 60_000
    idat = b"".join(comp.compress(row * 500) for _ in range(40)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", 20_000, 20_000, 8, 2, 0, 0, 0)
    png = b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    (root / "a" / "bomb.png").write_bytes(png)
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    before = peak()
    index = index_dataset(root)
    after = peak()
    print(json.dumps({"before": before, "after": after, "samples": len(index.samples),
                      "skipped": [[s.path, s.reason] for s in index.skipped], "bomb_bytes": len(png)}))
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss units and fork behaviour checked on Linux only")
def test_row06_decompression_bomb_skipped_and_reported_with_peak_memory_bounded(tmp_path) -> None:
    bound = 100 * 1024**2  # the decoded bomb would be 1.2 GB; a header check costs next to nothing
    out = subprocess.run(
        [sys.executable, "-c", BOMB_SCRIPT, str(tmp_path / "ds")], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["samples"] == 6
    [(path, reason)] = figures["skipped"]
    assert path == "a/bomb.png"
    assert re.fullmatch(r"image of (20000x20000|400,000,000) pixels exceeds the limit of 50,000,000 pixels", reason)
    growth = figures["after"] - figures["before"]
    print(f"FIGURES row6 peak RSS growth while indexing a 20000x20000 PNG: {growth / 1024**2:.1f} MB (bound 100 MB)")
    assert growth < bound, growth


# --- rows 7 and 8: unusable files listed in the dataset summary with their reason -----------------------------------


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\nnewpath 0 0 moveto 10 10 lineto\n%%EOF\n"


def _photos(root: Path, classes=("cats", "dogs"), n: int = 3) -> None:
    for k, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            noisy(10 * k + i, (40, 30)).save(root / cls / f"{i}.jpg", quality=90)


def test_row07_truncated_random_and_placeholder_files_skipped_and_listed_with_reason(tmp_path) -> None:
    from classifier.data.dataset import index_dataset

    root = tmp_path / "ds"
    _photos(root)
    jpeg = encode(noisy(99, (64, 64)), "JPEG", quality=90)
    (root / "cats" / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "dogs" / "noise.png").write_bytes(np.random.default_rng(7).integers(0, 256, 2048, np.uint8).tobytes())
    (root / "dogs" / "spacer.gif").write_bytes(encode(Image.new("P", (1, 1)), "GIF"))
    summary = index_dataset(root).summary()
    assert summary["counts"]["all"] == {"cats": 3, "dogs": 3}
    reasons = {s["path"]: s["reason"] for s in summary["skipped"]}
    assert reasons["cats/cut.jpg"] == "truncated or corrupt image data"
    assert reasons["dogs/noise.png"] == "not an image in an allowed format (JPEG, PNG, WebP, BMP, GIF, TIFF)"
    assert "placeholder" in reasons["dogs/spacer.gif"], reasons
    assert set(reasons) == {"cats/cut.jpg", "dogs/noise.png", "dogs/spacer.gif"}


def test_row08_eps_and_pdf_renamed_jpg_refused_by_allow_list_without_ghostscript(tmp_path, monkeypatch) -> None:
    from classifier.data.dataset import index_dataset

    calls: list = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(a))
    root = tmp_path / "ds"
    _photos(root)
    (root / "cats" / "poster.jpg").write_bytes(EPS)
    (root / "dogs" / "scan.jpg").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer <<>>\n%%EOF\n")
    (root / "dogs" / "icon.jpg").write_bytes(encode(Image.new("RGB", (16, 16)), "ICO"))
    index = index_dataset(root)
    allow_list = "not an image in an allowed format (JPEG, PNG, WebP, BMP, GIF, TIFF)"
    assert {(s.path, s.reason) for s in index.skipped} == {
        ("cats/poster.jpg", allow_list),
        ("dogs/scan.jpg", allow_list),
        ("dogs/icon.jpg", allow_list),
    }
    assert calls == [] and len(index.samples) == 6


# --- a tiny trained run: red pictures vs blue pictures (rows 12, 13 and 22) -------------------------------------------


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory) -> Path:
    """simple_cnn at 32 px trained on noisy red vs noisy blue squares: any preprocessing mistake shows as a wrong
    colour, so the right answer is known for every kind of input file."""
    from classifier.training import TrainConfig, fit

    base = tmp_path_factory.mktemp("colour")
    rng = np.random.default_rng(0)
    for cls, rgb in (("blue", (30, 40, 220)), ("red", (220, 30, 40))):
        (base / "data" / cls).mkdir(parents=True)
        for i in range(12):
            arr = np.clip(np.array(rgb) + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(base / "data" / cls / f"{i}.png")
    cfg = TrainConfig(data=str(base / "data"), backbone="simple_cnn", weights="none", img_size=32, epochs=4,
                      batch_size=8, lr=3e-3, augment="none", num_workers=0, device="cpu", seed=0)  # fmt: skip
    result = fit(cfg, base / "run")
    assert result.status == "completed", result.error
    return base / "run"


def _copy_run(run: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run, dest)
    return dest


class _Payload:
    """Unpickling this writes `marker`: what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --- row 12: a pickle disguised as a checkpoint ----------------------------------------------------------------------


def test_row12_pickle_checkpoint_refused_payload_never_runs(colour_run, tmp_path, capsys) -> None:
    from classifier.predict import load_run
    from classifier.rundir import RESUME as RESUME_FILE

    marker = tmp_path / "payload-ran"
    image = tmp_path / "red.png"
    Image.new("RGB", (40, 40), (220, 30, 40)).save(image)
    for i, write in enumerate(
        (
            lambda p: p.write_bytes(pickle.dumps({"conv.weight": _Payload(marker)})),  # plain pickle
            lambda p: torch.save({"conv.weight": _Payload(marker)}, p),  # torch's zip-of-pickle format
        )
    ):
        run = _copy_run(colour_run, tmp_path / f"run{i}")
        write(run / "model.safetensors")
        with pytest.raises(WeightsError, match="safetensors"):
            load_run(run)
        assert main(["predict", "--run", str(run), str(image)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "model.safetensors" in err and "Traceback" not in err
        # The resume checkpoint goes through the same reader.
        write(run / RESUME_FILE)
        assert main(["train", "--resume", str(run), "--quiet"]) != 0
        err = capsys.readouterr().err
        assert RESUME_FILE in err and "Traceback" not in err
    assert not marker.exists()


# --- row 13: safetensors that do not fit ------------------------------------------------------------------------------


def _bad_weights(good: dict[str, torch.Tensor], head: str) -> dict[str, bytes | dict[str, torch.Tensor]]:
    renamed = {("renamed." + k if i == 0 else k): v for i, (k, v) in enumerate(good.items())}
    first = next(iter(good))
    reshaped = {**good, first: torch.zeros(*good[first].shape[:-1], good[first].shape[-1] + 1)}
    head_w, head_b = f"{head}.weight", f"{head}.bias"  # the classifier head (classes x features)
    three = {**good, head_w: torch.cat([good[head_w], good[head_w][:1]]), head_b: torch.cat([good[head_b],
             good[head_b][:1]])}  # fmt: skip
    return {"wrong keys": renamed, "wrong shapes": reshaped, "wrong class count": three,
            "oversized header": (10**12).to_bytes(8, "little") + b"{}"}  # fmt: skip


def test_row13_mismatched_safetensors_give_clear_error_and_current_model_unchanged(colour_run, tmp_path, capsys):
    from safetensors.torch import load_file

    from classifier.models.weights import load_state_checked
    from classifier.predict import load_run

    good = load_file(str(colour_run / "model.safetensors"))
    current = load_run(colour_run).model
    before = {k: v.clone() for k, v in current.state_dict().items()}
    expected = {
        "wrong keys": r"does not fit this model: 1 missing keys .*1 unexpected keys \(e\.g\. renamed\.",
        "wrong shapes": r"does not fit this model: 1 shape mismatches",
        "wrong class count": r"has a classifier head for 3 classes but the run names 2 \(blue, red\); these weights",
        "oversized header": r"not a valid safetensors file \(header of 1000000000000 bytes",
    }
    image = tmp_path / "blue.png"
    Image.new("RGB", (40, 40), (30, 40, 220)).save(image)
    head = next(name for name, mod in current.named_modules() if mod is current.get_classifier())
    for case, bad in _bad_weights(good, head).items():
        run = _copy_run(colour_run, tmp_path / case.replace(" ", "-"))
        path = run / "model.safetensors"
        if isinstance(bad, bytes):
            path.write_bytes(bad)
        else:
            save_file(bad, str(path))
            with pytest.raises(WeightsError):  # the model in use is never half-loaded by a bad file
                load_state_checked(current, bad, case, allow_head_mismatch=False)
        with pytest.raises(WeightsError, match=expected[case]) as e:
            load_run(run)
        assert str(path) in str(e.value)  # names the file
        assert main(["predict", "--run", str(run), str(image)]) == 2, case
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    after = current.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert load_file(str(colour_run / "model.safetensors")).keys() == good.keys()  # the run itself untouched


# --- row 21: unreachable pretrained weights from the CLI ------------------------------------------------------------


def test_row21_unknown_backbone_and_offline_weights_exit_2_with_choices(tmp_path, monkeypatch, capsys) -> None:
    from classifier.models import weights as W

    data = tmp_path / "ds"
    _photos(data, n=2)
    assert main(["train", "--data", str(data), "--backbone", "resnet19", "--out", str(tmp_path / "r1")]) == 2
    err = capsys.readouterr().err
    assert "unknown backbone 'resnet19'" in err and "resnet18" in err and "Traceback" not in err
    monkeypatch.setattr(W, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(W, "hub_cached", lambda name: False)
    argv = ["train", "--data", str(data), "--backbone", "resnet18", "--weights", "hub", "--out", str(tmp_path / "r2"),
            "--img-size", "32", "--epochs", "1", "--device", "cpu", "--workers", "0", "--quiet"]  # fmt: skip
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert "'none' (train from scratch)" in err and "'bundled'" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1


# --- row 22: prediction on images unlike the training data -----------------------------------------------------------


def test_row22_prediction_on_other_sizes_modes_formats_same_preprocessing_correct_answer(colour_run, tmp_path):
    from classifier.predict import load_run, predict_images, predict_items, predict_paths

    red, blue = (220, 30, 40), (30, 40, 220)
    rotated = Image.new("RGB", (90, 60), red)
    rotated.paste(Image.new("RGB", (30, 60), blue), (0, 0))  # a blue band on the left, stored sideways
    exif = Image.Exif()
    exif[0x0112] = 6
    cases = {
        "big.jpg": (encode(Image.new("RGB", (640, 480), red), "JPEG", quality=92), "red"),
        "small.webp": (encode(Image.new("RGB", (9, 13), blue), "WEBP", lossless=True), "blue"),
        "palette.gif": (encode(Image.new("RGB", (50, 70), red).convert("P"), "GIF"), "red"),
        "opaque-rgba.png": (encode(Image.new("RGBA", (33, 33), blue + (255,)), "PNG"), "blue"),
        "cmyk.jpg": (encode(Image.new("RGB", (48, 48), red).convert("CMYK"), "JPEG", quality=95), "red"),
        "wide.bmp": (encode(Image.new("RGB", (300, 40), blue), "BMP"), "blue"),
        "page1-of-2.tiff": (
            encode(
                Image.new("RGB", (40, 40), red), "TIFF", save_all=True, append_images=[Image.new("RGB", (40, 40), blue)]
            ),
            "red",
        ),  # fmt: skip
        "exif6.jpg": (encode(rotated, "JPEG", quality=95, exif=exif), None),
    }
    paths = []
    for name, (data, _) in cases.items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    run = load_run(colour_run)
    results = predict_paths(run, paths, top_k=2)
    assert [r.get("error") for r in results] == [None] * len(paths)
    for r, (name, (_, label)) in zip(results, cases.items()):
        if label:
            assert r["label"] == label and r["probability"] > 0.9, (name, r)
    # Prediction and evaluation share one preprocessing path: the same files give the same probabilities.
    from_eval = predict_items(run, paths)
    from_predict = np.array([[dict(r["top_k"])[c] for c in run.class_names] for r in results])
    np.testing.assert_allclose(from_predict, from_eval, atol=1e-5)
    # EXIF orientation 6 is applied before the model sees the picture: the same as the upright pixels.
    upright = rotated.transpose(Image.Transpose.ROTATE_270)
    np.testing.assert_allclose(from_eval[-1], predict_images(run, [upright])[0], atol=0.02)
    sideways = predict_images(run, [rotated])[0]
    assert not np.allclose(from_eval[-1], sideways, atol=1e-4)


# --- rows 14 and 20: browser sessions (two AppTest instances are two Streamlit sessions) ---------------------------


def _session(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def _start(at: AppTest, data: str, name: str, epochs: int) -> None:
    """Fill in the Train page for a small simple_cnn run on `data` and click Start."""
    at.selectbox(key="w_data").set_value(data).run()
    at.selectbox(key="w_backbone").set_value("simple_cnn").run()
    at.number_input(key="w_epochs_finetune").set_value(epochs)
    at.number_input(key="w_img").set_value(32)
    at.number_input(key="w_batch").set_value(8)
    at.text_input(key="w_run_name").set_value(name)
    at.button[[b.label for b in at.button].index("Start training")].click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def _status_line(at: AppTest, name: str) -> str:
    return next((m.value for m in at.markdown if f"{name}** —" in m.value), "")


def _shapes_zip(seed: int, classes: tuple[str, ...]) -> bytes:
    from classifier.data.demo import make_demo_dataset

    with __import__("tempfile").TemporaryDirectory() as tmp:
        root = make_demo_dataset(Path(tmp) / "d", n_per_class=10, size=32, seed=seed, classes=classes)
        return zip_of({f.relative_to(root).as_posix(): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()})


@pytest.mark.slow
def test_row14_run_keeps_training_after_its_session_is_gone_and_a_new_session_sees_it() -> None:
    from classifier.data.demo import make_demo_dataset
    from classifier.jobs import default_executor
    from classifier.workspace import datasets_dir

    data = make_demo_dataset(datasets_dir() / "shapes", n_per_class=12, size=32, seed=3, classes=("circle", "cross"))
    first = _session("app_pages/train.py")
    _start(first, str(data), "row14", epochs=20)
    [job] = default_executor().list()
    for _ in range(3):  # clicks and page switches in the first session while the run trains
        first.switch_page("app_pages/data.py").run()
        first.switch_page("app_pages/train.py").run()
        assert not first.exception, first.exception
    del first  # the tab is closed: nothing of that session is left
    second = _session("app_pages/train.py")
    assert "row14" in _status_line(second, "row14") and any(
        s in _status_line(second, "row14") for s in ("queued", "running")
    )
    deadline = time.monotonic() + 150
    while "completed" not in _status_line(second, "row14"):
        assert time.monotonic() < deadline, _status_line(second, "row14")
        assert "failed" not in _status_line(second, "row14") and "interrupted" not in _status_line(second, "row14")
        time.sleep(1.0)
        second.run()
        assert not second.exception, second.exception
    assert default_executor().status(job.run_id).status == "completed"
    assert len(default_executor().store.get(job.run_id)["history"]) == 20  # every epoch ran, none was lost


@pytest.mark.slow
def test_row20_two_sessions_see_their_own_uploads_and_their_runs_queue() -> None:
    from classifier.jobs import default_executor

    sessions, paths = [], []
    for seed, classes in ((1, ("circle", "square")), (2, ("star", "triangle", "cross"))):
        at = _session("app_pages/data.py")
        at.radio(key="w_source").set_value("Upload a .zip").run()
        at.file_uploader[0].upload(f"set{seed}.zip", _shapes_zip(seed, classes), "application/zip")
        at.run()
        assert not at.exception, at.exception
        sessions.append(at)
        paths.append(at.session_state["dataset_path"])
    a, b = sessions
    assert paths[0] != paths[1]
    for at, path, classes in zip(sessions, paths, (("circle", "square"), ("cross", "star", "triangle"))):
        at.run()  # each session, re-run after the other uploaded, still shows its own dataset
        assert at.session_state["dataset_path"] == path
        assert any(h.value == f"Dataset: {Path(path).name}" for h in at.header)
        counts = next(df.value for df in at.dataframe if "total" in df.value.columns)
        assert sorted(counts.index) == list(classes)
    for at, path, name in zip(sessions, paths, ("run-a", "run-b")):
        at.switch_page("app_pages/train.py").run()
        _start(at, path, name, epochs=6)
    ex = default_executor()
    runs = {j.name: j.run_id for j in ex.list()}
    assert set(runs) == {"run-a", "run-b"}
    seen_queue, deadline = False, time.monotonic() + 180
    while True:
        states = {name: ex.status(rid).status for name, rid in runs.items()}
        assert list(states.values()) != ["running", "running"], "two runs trained at once on one device"
        seen_queue |= set(states.values()) == {"running", "queued"}
        if all(s not in ("queued", "running") for s in states.values()):
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.05)
    assert states == {"run-a": "completed", "run-b": "completed"} and seen_queue
    for name, path in (("run-a", paths[0]), ("run-b", paths[1])):
        assert Path(ex.status(runs[name]).config["data"]).resolve() == Path(path).resolve()


# --- rows 23, 24 and 29 (on a shared server): links out of a dataset, huge or repetitive CSVs, hostile names --------


def test_row23_links_out_of_a_dataset_are_listed_and_never_followed(tmp_path) -> None:
    from classifier.data.dataset import LINK, index_dataset

    outside = tmp_path / "secret"
    _photos(outside, classes=("private",), n=3)
    (outside / "notes.jpg").write_bytes(encode(noisy(99), "JPEG"))
    root = tmp_path / "ds"
    _photos(root)
    (root / "stolen").symlink_to(outside / "private", target_is_directory=True)  # a class folder that is a link
    (root / "cats" / "peek.jpg").symlink_to(outside / "notes.jpg")  # a file that is a link
    (root / "dogs" / "deeper").symlink_to(outside, target_is_directory=True)  # a folder inside a class
    index = index_dataset(root)
    assert index.classes == ["cats", "dogs"] and len(index.samples) == 6
    assert {s.path: s.reason for s in index.skipped} == {
        "cats/peek.jpg": LINK, "dogs/deeper": LINK, "stolen": LINK,
    }  # fmt: skip
    assert not any("private" in s.path or "notes" in s.path for s in index.samples)
    assert "3 symbolic links were not followed" in index.warnings

    # A CSV row through a linked folder is skipped the same way; a '..' path is refused naming the line.
    (root / "list.csv").write_text("path,label\ncats/0.jpg,cats\nstolen/0.jpg,cats\ndogs/1.jpg,dogs\ncats/1.jpg,cats\n")
    index = index_dataset(root / "list.csv")
    assert [s.path for s in index.skipped] == ["stolen/0.jpg"] and index.skipped[0].reason == LINK
    (root / "bad.csv").write_text("path,label\ncats/0.jpg,cats\n../secret/private/0.jpg,cats\n")
    with pytest.raises(DatasetError, match=r"bad\.csv, line 3: path '\.\./secret.*points outside"):
        index_dataset(root / "bad.csv")


def test_row24_a_csv_listing_one_file_thousands_of_times_is_merged_in_seconds(tmp_path, monkeypatch) -> None:
    import time

    from classifier.data import dataset as dataset_mod
    from classifier.data.dataset import index_dataset

    root = tmp_path / "ds"
    _photos(root)
    rows = "".join("cats/0.jpg,cats\n" for _ in range(2000)) + "dogs/0.jpg,dogs\ndogs/1.jpg,dogs\ncats/1.jpg,cats\n"
    (root / "many.csv").write_text("path,label\n" + rows)
    start = time.monotonic()
    index = index_dataset(root / "many.csv")
    seconds = time.monotonic() - start
    assert len(index.samples) == 4 and seconds < 5, seconds
    assert any("1999 rows repeated a path already listed with the same label; merged" in w for w in index.warnings)
    (root / "conflict.csv").write_text("path,label\ncats/0.jpg,cats\ndogs/0.jpg,dogs\ncats/0.jpg,dogs\n")
    with pytest.raises(DatasetError, match=r"lines 2 and 4: 'cats/0\.jpg' is listed as 'cats' and as 'dogs'"):
        index_dataset(root / "conflict.csv")
    monkeypatch.setattr(dataset_mod, "MAX_CSV_ROWS", 100)
    (root / "huge.csv").write_text("path,label\n" + "".join(f"x/{i}.jpg,x\n" for i in range(101)))
    with pytest.raises(DatasetError, match="more than 100 rows"):
        index_dataset(root / "huge.csv")
    monkeypatch.setattr(dataset_mod, "MAX_FILE_BYTES", 100)
    index = index_dataset(root)
    assert all(s.reason.startswith("file larger than") for s in index.skipped) and not index.samples


def test_row29_control_characters_in_zip_names_are_refused(tmp_path) -> None:
    from classifier.data.archive import extract_zip

    archive = tmp_path / "names.zip"
    archive.write_bytes(zip_of({"cats/ok.png": encode(noisy(1), "PNG"), "cats/bell\x07.png": encode(noisy(2), "PNG"),
                                "cats/new\nline.png": encode(noisy(3), "PNG")}))  # fmt: skip
    report = extract_zip(archive, tmp_path / "out")
    assert files_under(tmp_path / "out") == {"cats/ok.png"}
    assert sorted(reason for _, reason in report.refused) == ["control character in name"] * 2


def test_row29_names_are_shown_literally_and_downloads_cannot_run_formulas(tmp_path) -> None:
    import csv as csv_mod

    from classifier.io import spreadsheet_safe
    from classifier.rundir import run_zip, write_split, write_val_predictions
    from ui.widgets import literal

    assert [spreadsheet_safe(v) for v in ("=SUM(A1)", "+1", "-x", "@cmd", "cats", 0.5, "-0.5")] == [
        "'=SUM(A1)", "'+1", "'-x", "'@cmd", "cats", 0.5, "'-0.5",
    ]  # fmt: skip
    run = tmp_path / "run"
    names = ['=HYPERLINK("http://x")', "@evil", "cats"]
    write_split(run, [("=cmd|' /C calc'!A0.png", names[0], "val"), ("b.png", names[2], "train")])
    write_val_predictions(run, ["=cmd|' /C calc'!A0.png"], [0], np.array([[0.7, 0.2, 0.1]]), names)
    with zipfile.ZipFile(io.BytesIO(run_zip(run, "r"))) as zf:
        for member in ("r/split.csv", "r/val_predictions.csv"):
            cells = [c for row in csv_mod.reader(io.StringIO(zf.read(member).decode())) for c in row]
            assert not any(c.startswith(("=", "+", "-", "@")) for c in cells), cells
    assert (run / "split.csv").read_text().splitlines()[1].startswith("=cmd")  # the run's own file is unchanged
    shown = literal("**bold** :red[x] <b>html</b> $x$ [link](http://e) a\x07b")
    assert shown.startswith(r"\*\*bold\*\*") and r"\:red\[x\]" in shown and r"\$x\$" in shown
    assert "\x07" not in shown and r"\\x07" in shown  # the control character shown as an escape, not sent


def test_row30_an_unexpected_error_is_a_short_message_with_an_id_in_the_server_log(monkeypatch, caplog) -> None:
    import ui.widgets

    assert 'showErrorDetails = "none"' in (REPO / ".streamlit" / "config.toml").read_text()
    secret = str(REPO / "classifier" / "store.py")

    def broken(*args, **kwargs):
        raise RuntimeError(f"disk full while writing {secret}")

    monkeypatch.setattr(ui.widgets, "jobs", broken)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    with caplog.at_level("ERROR", logger="classifier.app"):
        at.run()
    assert not at.exception, at.exception
    [error] = [e.value for e in at.error]
    error_id = error.split("(error ", 1)[1].split(")", 1)[0]
    assert len(error_id) == 8 and secret not in error and "Traceback" not in error
    assert any(error_id in r.getMessage() and r.exc_info for r in caplog.records)
