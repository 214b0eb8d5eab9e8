"""`lr-find`: the learning-rate range test for the settings a run would use; the curve and suggestion as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from classifier.cli.config_flags import add_runtime, add_settings, settings_config
from classifier.errors import ClassifierError

NAME = "lr-find"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        NAME,
        help="learning-rate range test: loss against an exponentially rising learning rate, with a suggestion",
        description="Train a copy of the model a run with these settings would use for a few dozen steps while the "
        "learning rate rises exponentially; print the curve and the suggested learning rate as JSON. Example: "
        "python -m classifier lr-find --data demo --backbone resnet18 --mode linear --plot lr.html",
    )
    add_settings(p)
    g = p.add_argument_group("range test")
    g.add_argument("--start-lr", type=float, default=1e-7, help="first learning rate")
    g.add_argument("--end-lr", type=float, default=10.0, help="last learning rate (it stops earlier on divergence)")
    g.add_argument("--steps", type=int, default=None, help="optimizer steps (default 60, or 30 on small data)")
    g.add_argument("--plot", default=None, metavar="FILE", help="write the plot: FILE.html or FILE.png")
    add_runtime(g)


def run(a: argparse.Namespace) -> int:
    from tqdm import tqdm

    from classifier.figures import lr_find_figure
    from classifier.training.lr_find import lr_find

    cfg = settings_config(a)
    bars: dict[str, tqdm] = {}

    def progress(phase: str, done: int, total: int) -> None:
        if a.quiet:
            return
        if phase not in bars:
            for b in bars.values():
                b.close()
            bars[phase] = tqdm(total=total, desc=phase, file=sys.stderr, leave=False)
        bars[phase].n = done
        bars[phase].refresh()

    try:
        result = lr_find(cfg, start_lr=a.start_lr, end_lr=a.end_lr, steps=a.steps, progress=progress)
    finally:
        for b in bars.values():
            b.close()
    out = result.to_dict()
    if a.plot:
        out["plot"] = write_figure(lr_find_figure(result), a.plot)
    print(json.dumps(out))
    return 0


def write_figure(fig, path: str) -> str:
    """Write a Plotly figure as HTML (self-contained) or, for .png/.svg/.pdf, as an image."""
    out = Path(path)
    if out.suffix.lower() in (".html", ".htm"):
        fig.write_html(out, include_plotlyjs=True)
    elif out.suffix.lower() in (".png", ".svg", ".pdf", ".jpg", ".jpeg", ".webp"):
        try:
            fig.write_image(out)
        except (ImportError, ValueError, RuntimeError) as e:
            raise ClassifierError(f"cannot write {out} as an image ({e}); write an .html plot instead") from e
    else:
        raise ClassifierError(f"--plot {path}: use a .html or .png file name")
    return str(out)
