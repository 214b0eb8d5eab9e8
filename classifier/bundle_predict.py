"""Classify images with an exported model: the predict script of an export bundle (see classifier/export.py).

Copied into the bundle as predict_onnx.py (or predict_torchscript.py) next to config.json and the model; it
imports nothing from the workbench, only numpy, Pillow and the runtime:

    pip install onnxruntime pillow numpy        # torch instead of onnxruntime for a TorchScript model
    python predict_onnx.py photo.jpg [more.jpg ...] [--top-k 3]

Prints one JSON line per image: {"path": ..., "top_k": [[class, probability], ...]}; for a multi-label model
(config.json "task": "multilabel") {"path": ..., "labels": [[label, probability], ...] (each label whose sigmoid
probability reaches its threshold in config.json), "probabilities": {label: probability}}. The preprocessing
repeats the training run's evaluation transform from config.json: resize the shorter side to
floor(size / crop_pct) with the run's interpolation, centre crop to size x size, scale to 0..1, normalise.
"""

import argparse
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent


def load_rgb(path: str, pre: dict) -> Image.Image:
    """Decode an image upright as 8-bit RGB; transparency goes onto white, as in the workbench."""
    image = Image.open(path)
    if image.format == "JPEG":  # decode at the smallest DCT scale still covering the resize, as the workbench does
        side = int(pre["input_size"][-1] / pre["crop_pct"]) + 1
        image.draft("RGB", (side, side))
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, (255, 255, 255))
        image.paste(rgba, mask=rgba)
    return image.convert("RGB")


def preprocess(image: Image.Image, pre: dict) -> np.ndarray:
    """(3, H, W) float32 with the same numbers as the run's eval transform (timm/torchvision on PIL)."""
    if pre.get("grayscale"):
        image = image.convert("L").convert("RGB")
    _, height, width = pre["input_size"]
    resample = getattr(Image.Resampling, pre["interpolation"].upper())
    scale_h, scale_w = math.floor(height / pre["crop_pct"]), math.floor(width / pre["crop_pct"])
    w, h = image.size
    if pre["crop_mode"] == "squash":
        size = (scale_w, scale_h)
    elif pre["crop_mode"] == "center" and scale_h == scale_w:  # shorter side to scale_h, aspect ratio kept
        size = (scale_h, int(scale_h * h / w)) if w <= h else (int(scale_h * w / h), scale_h)
    else:
        raise SystemExit(f"crop_mode {pre['crop_mode']!r} with this input size is not handled by this script")
    if size != image.size:
        image = image.resize(size, resample)
    w, h = image.size
    if w < width or h < height:  # smaller than the crop: pad with black around it first, as torchvision does
        canvas = Image.new("RGB", (max(w, width), max(h, height)))
        canvas.paste(image, ((canvas.width - w) // 2, (canvas.height - h) // 2))
        image, (w, h) = canvas, canvas.size
    left, top = int(round((w - width) / 2.0)), int(round((h - height) / 2.0))
    image = image.crop((left, top, left + width, top + height))
    x = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    x = (x - np.asarray(pre["mean"], dtype=np.float32)) / np.asarray(pre["std"], dtype=np.float32)
    return x.transpose(2, 0, 1)


def logits_of(batch: np.ndarray, config: dict) -> np.ndarray:
    """Run the model file named in config.json on a (N, 3, H, W) float32 batch."""
    model_path = str(HERE / config["model_file"])
    if config["format"] == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        return session.run([config["output_name"]], {config["input_name"]: batch})[0]
    import torch

    with torch.no_grad():
        return torch.jit.load(model_path, map_location="cpu")(torch.from_numpy(batch)).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description="Classify images with the exported model.")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--top-k", type=int, default=3)
    args = parser.parse_args()
    config = json.loads((HERE / "config.json").read_text(encoding="utf-8"))
    pre, classes = config["preprocessing"], config["class_names"]
    batch = np.stack([preprocess(load_rgb(p, pre), pre) for p in args.images])
    logits = logits_of(batch, config).astype(np.float64)
    if config.get("task") == "multilabel":
        probs = 1.0 / (1.0 + np.exp(-logits))
        thresholds = config["thresholds"]
        for path, p in zip(args.images, probs):
            above = [i for i in np.argsort(-p, kind="stable") if p[i] >= thresholds[i]]
            print(json.dumps({"path": path, "labels": [[classes[i], round(float(p[i]), 6)] for i in above],
                              "probabilities": {c: round(float(v), 6) for c, v in zip(classes, p)}}))  # fmt: skip
        return
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for path, p in zip(args.images, probs):
        top = np.argsort(-p)[: max(1, args.top_k)]
        print(json.dumps({"path": path, "top_k": [[classes[i], round(float(p[i]), 6)] for i in top]}))


if __name__ == "__main__":
    main()
