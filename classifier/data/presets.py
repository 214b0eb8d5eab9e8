"""The augmentation presets by name, with what each does: a plain table (no torch), so the TrainConfig metadata,
the CLI's `--augment` choices and the app read it without importing torchvision. `transforms.py` builds them."""

AUGMENT_PRESETS = {
    "none": "no augmentation: the evaluation transform",
    "light": "random resized crop and horizontal flip",
    "standard": "light + rotation up to 15 degrees and colour jitter",
    "strong": "random resized crop, flip, RandAugment and random erasing",
}
