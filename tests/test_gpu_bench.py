"""bench/gpu.py stays ready to run on a GPU machine: its arguments parse and a tiny CPU dry run goes through both
loops and reports every column."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"


def _gpu_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_bench_dry_run(tmp_path, capsys):
    gpu = _gpu_bench()
    a = gpu.parse_args([])
    assert a.models.split(",") == ["resnet18", "resnet50", "efficientnet_b0", "vit_small_patch16_224"]
    assert a.img_size == 224 and not a.dry_run
    rows = gpu.main(["--dry-run", "--json", str(tmp_path / "gpu.json")])
    assert [r["model"] for r in rows] == ["resnet18"]
    r = rows[0]
    assert r["ours"] > 0 and r["bare"] > 0
    # ours and bare are rounded to 0.1 image/s (a tiny CPU run gives ~1), the ratio from the unrounded figures
    assert (r["ours"] - 0.05) / (r["bare"] + 0.05) <= r["ratio"] <= (r["ours"] + 0.05) / (r["bare"] - 0.05)
    assert 0 <= r["data_share"] < 1 and r["cache"] == "memory"
    assert (tmp_path / "gpu.json").is_file() and "resnet18: ours" in capsys.readouterr().out
