"""Time to take in a zip whose CSV lists one photo 2,000 times (row 24 of docs/bad_inputs.md), on real photos.

    python bench/csv_index.py                                   # photos from /work/shared/data/hymenoptera
    python bench/csv_index.py --photos DIR                      # any folder of class folders of images

The case from review: a small zip (789 kB there) whose CSV lists one image 2,000 times took 9.5 s of the server's time
to index, because every row was opened and decoded. Here the zip holds a few real photos per class and a CSV that
lists the first photo 2,000 times and each of the others once; the upload path the Data page takes is timed
(`ingest_zip`: extract, then `index_dataset` on the CSV), and, side by side in the same run, the same CSV with the
repeats removed (what the index must cost anyway). Repeats are merged before any file is read, so the two should
differ by little. Prints one FIGURES line with the load average.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REPEATS = 2000


def make_zip(photos: Path, per_class: int, repeats: int) -> tuple[bytes, int]:
    """A zip of `per_class` photos from each class folder of `photos` (train split when there is one) and
    `labels.csv`, which lists the first photo `repeats` times; returns the bytes and the CSV's row count."""
    base = photos / "train" if (photos / "train").is_dir() else photos
    classes = sorted(d for d in base.iterdir() if d.is_dir())
    buf, rows = io.BytesIO(), []
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for cls in classes:
            for f in sorted(cls.iterdir())[:per_class]:
                name = f"images/{cls.name}/{f.name}"
                zf.write(f, name)
                rows.append(f"{name},{cls.name}\n")
        csv_rows = [rows[0]] * repeats + rows[1:]
        zf.writestr("labels.csv", "path,label\n" + "".join(csv_rows))
    return buf.getvalue(), len(csv_rows)


def timed_ingest(data: bytes, name: str) -> tuple[float, int, list[str]]:
    """Seconds to extract and index `data` as an uploaded zip, the samples indexed and the index's warnings."""
    from classifier.data.dataset import index_dataset
    from classifier.data.ingest import ingest_zip

    t0 = time.perf_counter()
    folder, _ = ingest_zip(data, name, max_bytes=500 * 2**20)
    index = index_dataset(folder / "labels.csv")
    return time.perf_counter() - t0, len(index.samples), index.warnings


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", type=Path, default=Path("/work/shared/data/hymenoptera"))
    p.add_argument("--per-class", type=int, default=4, help="photos per class in the zip")
    a = p.parse_args()
    os.environ["CLASSIFIER_WORKSPACE"] = tempfile.mkdtemp(prefix="csv-index-")
    repeated, rows = make_zip(a.photos, a.per_class, REPEATS)
    unique, unique_rows = make_zip(a.photos, a.per_class, 1)
    warm, _ = make_zip(a.photos, 1, 1)
    timed_ingest(warm, "warm-up.zip")  # imports and first decodes outside the timings
    load = os.getloadavg()
    t_uni, n_uni, _ = timed_ingest(unique, "unique.zip")
    t_rep, n_rep, warnings = timed_ingest(repeated, "repeated.zip")
    figures = {
        "zip_kb": round(len(repeated) / 1024),
        "csv_rows": rows,
        "seconds_repeated": round(t_rep, 3),
        "samples_repeated": n_rep,
        "seconds_without_repeats": round(t_uni, 3),
        "csv_rows_without_repeats": unique_rows,
        "ratio": round(t_rep / t_uni, 2),
        "merged_warning": next((w for w in warnings if "merged" in w), None),
        "load_before": [round(x, 2) for x in load],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    print("FIGURES", json.dumps(figures))
    return 0 if n_rep == n_uni else 1


if __name__ == "__main__":
    sys.exit(main())
