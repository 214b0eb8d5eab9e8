"""Dataset indexing: turn a folder, a zip or a CSV into a checked list of labelled images.

Four sources are understood:

- a folder with one subfolder per class (`root/<class>/*.jpg`, nested folders inside a class allowed);
- a folder with `train/` and `val/` (or `valid/`, `validation/`), optionally `test/`, each holding class
  subfolders; those splits are used as given;
- a `.zip` of either layout (one wrapping top-level folder is tolerated), extracted safely first;
- a CSV with columns `path,label` (optionally `split`), paths relative to the CSV; a CSV with a `labels` column
  (several labels per image) or one 0/1 column per label is a multi-label dataset (`classifier.data.multilabel`),
  and the index's `task` says so.

Every candidate image is fully decoded once; a file that cannot be used is skipped and listed with its
reason, never stopping the rest from loading. Exact duplicates are found by content hash.

On a shared server a dataset is hostile input: symbolic links are never followed (a class or split folder, or a
file, that is a link is skipped and listed, so nothing outside the dataset's root is read, shown or trained on);
a CSV may list at most `MAX_CSV_ROWS` rows, rows that repeat a path with the same label are merged (a path listed
with two labels is an error naming both rows); files larger than `MAX_FILE_BYTES` are skipped unread.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from classifier.data.images import DEFAULT_MAX_PIXELS, is_image_path, load_image, probe_image
from classifier.data.multilabel import check_labels, label_stats, read_rows
from classifier.errors import DatasetError, ImageError
from classifier.task import MULTI, SINGLE, split_labels

if TYPE_CHECKING:
    from classifier.data.archive import ArchiveLimits
    from classifier.data.versions import Edits, Overlay

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
IGNORED_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini", "__MACOSX"}
MAX_CSV_ROWS = 200_000  # a CSV dataset listing more rows is refused before any file is read
MAX_FILE_BYTES = 100 * 1024 * 1024  # an image file above this is skipped without reading it (a photo is megabytes)
LINK = "a symbolic link: not followed (nothing outside the dataset is read)"


@dataclass
class Sample:
    path: str  # relative to the dataset root, with forward slashes
    label: int
    split: str | None  # as given by the source, or None when the source has no splits
    sha1: str = ""
    width: int = 0
    height: int = 0
    labels: tuple[int, ...] | None = None  # a multi-label sample's label indices (maybe none); None: single-label


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class DatasetIndex:
    root: Path
    classes: list[str]
    samples: list[Sample]
    skipped: list[Skipped] = field(default_factory=list)
    layout: str = "class-folders"  # class-folders | split-folders | csv
    source: str = ""
    warnings: list[str] = field(default_factory=list)
    version: int = 0  # the dataset version applied (classifier.data.versions); 0: the files as they are
    excluded: list[str] = field(default_factory=list)  # paths the version leaves out
    relabelled: dict[str, tuple[str, str]] = field(default_factory=dict)  # path -> (class in the files, now)
    base: DatasetIndex | None = None  # version 0, which splits are drawn from, so a relabel never moves an image
    task: str = SINGLE  # single-label | multilabel (classifier.task)
    csv_lines: dict[str, int] = field(default_factory=dict)  # a CSV dataset's line of each path, for error messages

    @property
    def has_splits(self) -> bool:
        return any(s.split == "val" for s in self.samples)

    def path_of(self, sample: Sample) -> Path:
        return self.root / sample.path

    def counts(self, splits: list[str] | None = None) -> dict[str, dict[str, int]]:
        """Images per class per split: `{split: {class: n}}` (split "all" when none are assigned)."""
        splits = splits or [s.split or "all" for s in self.samples]
        out: dict[str, dict[str, int]] = defaultdict(lambda: {c: 0 for c in self.classes})
        for s, sp in zip(self.samples, splits):
            for c in self.label_indices(s):
                out[sp][self.classes[c]] += 1
        return dict(out)

    def label_indices(self, sample: Sample) -> tuple[int, ...]:
        """The sample's class (single-label) or its labels (multi-label, maybe none) as indices."""
        return tuple(sample.labels or ()) if self.task == MULTI else (sample.label,)

    def duplicate_groups(self) -> list[list[str]]:
        """Groups of paths whose bytes are identical."""
        by_hash: dict[str, list[str]] = defaultdict(list)
        for s in self.samples:
            by_hash[s.sha1].append(s.path)
        return [sorted(g) for g in by_hash.values() if len(g) > 1]

    def leakage(self, splits: list[str] | None = None) -> list[tuple[str, str]]:
        """(train path, val/test path) pairs with identical content: evaluation would be inflated."""
        splits = splits or [s.split or "" for s in self.samples]
        train: dict[str, str] = {}
        for s, sp in zip(self.samples, splits):
            if sp == "train":
                train.setdefault(s.sha1, s.path)
        return [
            (train[s.sha1], s.path) for s, sp in zip(self.samples, splits) if sp in ("val", "test") and s.sha1 in train
        ]

    def summary(self, splits: list[str] | None = None) -> dict:
        """Plain-data summary: classes, counts per class per split, size range, skipped files, duplicates, leakage."""
        widths = [s.width for s in self.samples] or [0]
        heights = [s.height for s in self.samples] or [0]
        return {
            "root": str(self.root),
            "source": self.source,
            "layout": self.layout,
            "n_images": len(self.samples),
            "classes": list(self.classes),
            "counts": self.counts(splits),
            "image_size": {
                "min_width": min(widths),
                "max_width": max(widths),
                "min_height": min(heights),
                "max_height": max(heights),
            },
            "skipped": [asdict(s) for s in self.skipped],
            "duplicates": self.duplicate_groups(),
            "leakage": [list(p) for p in self.leakage(splits)],
            "warnings": list(self.warnings),
            "version": self.version,
            "relabelled": {p: list(v) for p, v in self.relabelled.items()},
            "excluded": list(self.excluded),
            "task": self.task,
            **({"labels": label_stats(self, splits)} if self.task == MULTI else {}),
        }


def _visible(p: Path) -> bool:
    return not (p.name in IGNORED_NAMES or p.name.startswith("."))


def _subdirs(p: Path) -> list[Path]:
    """Visible real folders: a link to a folder is not one (see `_links`)."""
    return sorted((d for d in p.iterdir() if d.is_dir() and not d.is_symlink() and _visible(d)), key=lambda d: d.name)


def _links(base: Path, root: Path) -> list[Skipped]:
    """Every symbolic link below `base` (not followed), to be listed as skipped."""
    out = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        for n in sorted(dirnames + filenames):
            p = Path(dirpath) / n
            if p.is_symlink() and _visible(p):
                out.append(Skipped(p.relative_to(root).as_posix(), LINK))
        dirnames[:] = [n for n in dirnames if not (Path(dirpath) / n).is_symlink()]
    return out


def _unwrap(root: Path) -> Path:
    """Descend through wrapping folders (a zip of `my_data/...`) until the level that holds data."""
    for _ in range(3):
        dirs = _subdirs(root)
        files = [f for f in root.iterdir() if f.is_file() and _visible(f)]
        # A lone folder holding images directly is a (single) class, not a wrapper: stay.
        if (
            len(dirs) == 1
            and not any(is_image_path(f) or f.suffix.lower() == ".csv" for f in files)
            and (_subdirs(dirs[0]) or any(f.suffix.lower() == ".csv" for f in dirs[0].iterdir()))
        ):
            root = dirs[0]
        else:
            break
    return root


def _files_under(d: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(d, followlinks=False):
        dirnames[:] = sorted(n for n in dirnames if n not in IGNORED_NAMES and not n.startswith("."))
        for n in sorted(filenames):
            if n not in IGNORED_NAMES and not n.startswith("."):
                yield Path(dirpath) / n


def _candidates_from_class_folders(base: Path, root: Path, split: str | None) -> list[tuple[str, str, str | None]]:
    out = []
    for cdir in _subdirs(base):
        for f in _files_under(cdir):
            if is_image_path(f) and not f.is_symlink():
                out.append((f.relative_to(root).as_posix(), cdir.name, split))
    return out


@dataclass
class _FromCsv:
    root: Path
    rows: list[tuple[str, Any, str | None]]  # (path, class name | tuple of label names, split)
    notes: list[str]
    task: str = SINGLE
    lines: dict[str, int] = field(default_factory=dict)


def _candidates_from_csv(csv_path: Path) -> _FromCsv:
    """A CSV's rows: `path,label` is single-label; a `labels` column or one 0/1 column per label is multi-label."""
    root = csv_path.parent
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [c.strip().lower() for c in (reader.fieldnames or [])]
            if "label" in fields and "labels" in fields:
                raise DatasetError(f"{csv_path}: has both a label and a labels column; keep one")
            if "label" not in fields or "path" not in fields:
                multi = read_rows(csv_path, reader, MAX_CSV_ROWS, SPLIT_NAMES)  # or the error naming the columns
                return _FromCsv(root, list(multi.rows), multi.notes, MULTI, multi.lines)
            rows, notes = _csv_rows(csv_path, reader)
    except UnicodeDecodeError as e:
        raise DatasetError(f"{csv_path}: not a UTF-8 text CSV ({e})") from e
    return _FromCsv(root, rows, notes)


def _csv_rows(csv_path: Path, reader: csv.DictReader) -> tuple[list[tuple[str, str, str | None]], list[str]]:
    """(path, label, split) per row, checked: paths inside the CSV's folder, at most MAX_CSV_ROWS rows, a repeated
    path merged when its label agrees and an error naming both lines when it does not."""
    rows: dict[str, tuple[str, str, str | None]] = {}
    first_line: dict[str, int] = {}
    repeated = 0
    for i, row in enumerate(reader, start=2):
        if i - 1 > MAX_CSV_ROWS:
            raise DatasetError(f"{csv_path}: more than {MAX_CSV_ROWS} rows; split the dataset or raise the limit")
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        if not row.get("path") or not row.get("label"):
            raise DatasetError(f"{csv_path}, line {i}: empty path or label")
        rel = Path(row["path"])
        if rel.is_absolute() or ".." in rel.parts:
            raise DatasetError(f"{csv_path}, line {i}: path {row['path']!r} points outside the CSV's folder")
        key = rel.as_posix()
        split = SPLIT_NAMES.get(row.get("split", "").lower()) if row.get("split") else None
        if key in rows:
            if rows[key][1] != row["label"]:
                raise DatasetError(
                    f"{csv_path}, lines {first_line[key]} and {i}: {key!r} is listed as {rows[key][1]!r} and as "
                    f"{row['label']!r}; give each image one label"
                )
            repeated += 1
            continue
        rows[key], first_line[key] = (key, row["label"], split), i
    notes = [f"{csv_path.name}: {repeated} rows repeated a path already listed with the same label; merged"]
    return list(rows.values()), notes if repeated else []


def _through_link(root: Path, rel: str) -> bool:
    """Whether `root/rel` or any folder on the way to it is a symbolic link."""
    p = root
    for part in Path(rel).parts:
        p = p / part
        if p.is_symlink():
            return True
    return False


PLACEHOLDER_MAX_COLOURS = 256


def _probe(root: Path, rel: str, max_pixels: int) -> tuple[str, int, int, str] | str:
    """(sha1, width, height, format) of a usable image, or the reason it is not usable."""
    path = root / rel
    try:
        if _through_link(root, rel):
            return LINK
        if not path.is_file():
            return "file not found"
        if path.stat().st_size > MAX_FILE_BYTES:
            return f"file larger than {MAX_FILE_BYTES // 2**20} MB: not read"
        data = path.read_bytes()
        w, h, fmt = probe_image(path, max_pixels=max_pixels)
        return hashlib.sha1(data).hexdigest(), w, h, fmt
    except ImageError as e:
        return e.reason
    except OSError as e:
        return f"cannot read file ({e.strerror or e})"


def _skip_placeholders(root: Path, candidates: list, results: list) -> list:
    """Turn flat-colour GIFs in a dataset of JPEG photos into skips: they are "image not found" placeholders
    that scrapers save in place of a photo, and they would teach the model a wrong class cue."""
    ok = [r for r in results if not isinstance(r, str)]
    if not ok or sum(r[3] == "JPEG" for r in ok) < 0.8 * len(ok):
        return results
    out = []
    for c, r in zip(candidates, results):
        if not isinstance(r, str) and r[3] == "GIF":
            colours = load_image(root / c[0]).getcolors(maxcolors=PLACEHOLDER_MAX_COLOURS)
            if colours is not None:
                colours = len(colours)
                r = f"looks like a placeholder graphic, not a photo (GIF with {colours} colours among JPEG photos)"
        out.append(r)
    return out


def index_dataset(
    source: str | Path,
    *,
    extract_to: str | Path | None = None,
    limits: ArchiveLimits | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[int, int], None] | None = None,
) -> DatasetIndex:
    """Index a dataset folder, `.zip` or CSV; decode every image once and record what had to be skipped.

    A zip is extracted to `extract_to` (default: a folder named after the zip's content hash in the workspace),
    reusing an earlier extraction of the same bytes.

    >>> index = index_dataset("path/to/hymenoptera")  # doctest: +SKIP
    >>> index.classes
    ['ants', 'bees']
    """
    src = Path(source).expanduser()
    links: list[Skipped] = []
    from_csv = _FromCsv(src, [], [])
    if not src.exists():
        raise DatasetError(f"dataset {src} does not exist; give a folder of class subfolders, a .zip or a CSV")
    root = src
    if src.is_file() and src.suffix.lower() == ".zip":
        root = _unwrap(_extract_cached(src, extract_to, limits))
    if root.is_file() and root.suffix.lower() == ".csv":
        from_csv = _candidates_from_csv(root)
        root, candidates, layout = from_csv.root, from_csv.rows, "csv"
    elif root.is_dir():
        root = _unwrap(root)
        split_dirs = {SPLIT_NAMES[d.name.lower()]: d for d in _subdirs(root) if d.name.lower() in SPLIT_NAMES}
        csvs = sorted(root.glob("*.csv"))
        if "train" in split_dirs:
            layout = "split-folders"
            candidates = []
            for split, d in sorted(split_dirs.items()):
                candidates += _candidates_from_class_folders(d, root, split)
        elif not _subdirs(root) and len(csvs) == 1:
            from_csv = _candidates_from_csv(csvs[0])
            root, candidates, layout = from_csv.root, from_csv.rows, "csv"
        else:
            layout = "class-folders"
            candidates = _candidates_from_class_folders(root, root, None)
        if layout != "csv":
            links = _links(root, root)
    else:
        raise DatasetError(f"{src}: not a folder, a .zip or a .csv dataset")
    root = root.resolve()

    results: list[tuple[str, int, int] | str] = []
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
        for i, r in enumerate(pool.map(lambda c: _probe(root, c[0], max_pixels), candidates), start=1):
            results.append(r)
            if progress:
                progress(i, len(candidates))

    results = _skip_placeholders(root, candidates, results)
    multi = from_csv.task == MULTI
    used = [c for c, r in zip(candidates, results) if not isinstance(r, str)]
    classes = sorted({n for c in used for n in _names(c, multi)})
    class_idx = {c: i for i, c in enumerate(classes)}
    samples, skipped = [], list(links)
    for (rel, label, split), r in zip(candidates, results):
        if isinstance(r, str):
            skipped.append(Skipped(rel, r))
        elif multi:
            samples.append(Sample(rel, -1, split, *r[:3], labels=tuple(class_idx[n] for n in label)))
        else:
            samples.append(Sample(rel, class_idx[label], split, *r[:3]))
    warnings = from_csv.notes + ([f"{len(links)} symbolic links were not followed"] if links else [])
    empty = sorted({n for c in candidates for n in _names(c, multi)} - set(classes))
    if empty:
        what = "labels" if multi else "class folders"
        warnings.append(f"{what} with no usable images were left out: {', '.join(empty)}")
    if layout == "split-folders" and not any(s.split == "val" for s in samples):
        warnings.append("no val/ folder with images: a validation split will be drawn from train/")
    return DatasetIndex(root, classes, samples, skipped, layout, str(src), warnings, task=from_csv.task,
                        csv_lines=from_csv.lines)  # fmt: skip


def _names(candidate: tuple[str, Any, str | None], multi: bool) -> tuple[str, ...]:
    """The label names of a candidate row: its labels (multi-label) or its one class."""
    return tuple(candidate[1]) if multi else (candidate[1],)


def _extract_cached(archive: Path, extract_to: str | Path | None, limits: ArchiveLimits | None) -> Path:
    from classifier.data.archive import ArchiveLimits, extract_zip

    if extract_to is None:
        from classifier.workspace import datasets_dir

        h = hashlib.sha1()
        with open(archive, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        extract_to = datasets_dir() / f"{archive.stem}-{h.hexdigest()[:10]}"
    dest = Path(extract_to)
    if dest.is_dir() and any(dest.iterdir()):
        return dest
    extract_zip(archive, dest, limits or ArchiveLimits())
    return dest


def check_trainable(index: DatasetIndex) -> None:
    """Raise DatasetError in plain words when this dataset cannot be trained on."""
    where = index.source or str(index.root)
    if not index.samples:
        detail = f" ({len(index.skipped)} files were skipped; see the summary)" if index.skipped else ""
        raise DatasetError(
            f"{where}: no usable images found{detail}. Expected one subfolder per class with images inside "
            "(JPEG, PNG, WebP, BMP, GIF or TIFF), train/ and val/ folders of class subfolders, "
            "or a CSV with path,label."
        )
    if index.task == MULTI:
        check_labels(index)
        return
    if len(index.classes) < 2:
        raise DatasetError(
            f"{where}: only one class ({index.classes[0]!r}) has images; a classifier needs at least two classes."
        )
    per_class = Counter(s.label for s in index.samples)
    single = [index.classes[c] for c, n in sorted(per_class.items()) if n < 2]
    if single:
        raise DatasetError(
            f"{where}: class {', '.join(repr(c) for c in single)} has only one image; every class needs at least two "
            "(one to train on and one to validate). Add images or remove the class."
        )


def load_dataset(data: str, version: int | None = None) -> DatasetIndex:
    """Index `data` at dataset version `version` (None: the latest saved version; 0: the files as they are);
    the word "demo" means the built-in demo dataset (seed 0, generated once into the workspace; `means_demo`)."""
    from classifier.data.demo import resolve_data

    data = resolve_data(data)
    from classifier.data.versions import DatasetVersions

    index = index_dataset(data)
    versions = DatasetVersions(data)
    overlay = versions.get(version)
    if overlay.version == 0:
        return index
    return apply_overlay(index, overlay.version, overlay.relabel, overlay.exclude, str(versions.folder))


def save_version(
    data: str, edits: Edits | None = None, note: str = "", use_draft: bool = True, index: DatasetIndex | None = None
) -> int:
    """Save the latest version of `data` plus the draft (unless `use_draft` is False) plus `edits` as a new dataset
    version, after checking that it applies to the files (`index`, when given, is theirs, version 0), so a relabel
    to a class the dataset lacks fails here rather than when a run starts. The new version's number."""
    from classifier.data.versions import DatasetVersions

    versions = DatasetVersions(data)
    files = index if index is not None else index_dataset(data)

    def check(overlay: Overlay) -> None:
        apply_overlay(files, overlay.version, overlay.relabel, overlay.exclude, str(versions.folder))

    return versions.commit(edits, note, use_draft, check=check)


def apply_overlay(
    index: DatasetIndex, version: int, relabel: dict[str, str], exclude: set[str], where: str = ""
) -> DatasetIndex:
    """`index` as dataset version `version` sees it: `relabel` (path -> class name; for a multi-label dataset the
    image's labels joined by ';', empty for none) applied, `exclude` left out.

    The class list is the files' one, less classes the version leaves without images (a warning says so). A relabel
    to a class the dataset does not have is a DatasetError; edits of images no longer in the files are ignored with
    a warning."""
    multi = index.task == MULTI
    known = {s.path for s in index.samples}
    wanted = {p: tuple(sorted(set(split_labels(v, ";")))) if multi else (v,) for p, v in relabel.items()}
    unknown = sorted({c for v in wanted.values() for c in v if c not in index.classes})
    if unknown:
        raise DatasetError(
            f"dataset version {version} ({where}) relabels images to {', '.join(map(repr, unknown))}, which is not "
            f"a {'label' if multi else 'class'} of {index.source or index.root} ({', '.join(index.classes)})"
        )
    gone = sorted((set(relabel) | exclude) - known)
    kept = [s for s in index.samples if s.path not in exclude]
    before = [tuple(index.classes[c] for c in index.label_indices(s)) for s in kept]
    names = [wanted.get(s.path, b) for s, b in zip(kept, before)]
    used = {n for ns in names for n in ns}
    classes = [c for c in index.classes if c in used]
    idx = {c: i for i, c in enumerate(classes)}
    samples = [
        Sample(s.path, -1, s.split, s.sha1, s.width, s.height, tuple(idx[n] for n in ns))
        if multi
        else Sample(s.path, idx[ns[0]], s.split, s.sha1, s.width, s.height)
        for s, ns in zip(kept, names)
    ]
    moved = {s.path: (";".join(b), ";".join(ns)) for s, b, ns in zip(kept, before, names) if ns != b}
    warnings = list(index.warnings)
    if gone:
        warnings.append(f"dataset version {version} edits {len(gone)} images that are no longer there, e.g. {gone[0]}")
    if len(classes) < len(index.classes):
        left = ", ".join(c for c in index.classes if c not in classes)
        warnings.append(f"dataset version {version} leaves no images in class {left}; it is left out")
    return DatasetIndex(
        index.root, classes, samples, index.skipped, index.layout, index.source, warnings, version,
        sorted(exclude & known), moved, index, index.task, index.csv_lines,
    )  # fmt: skip
