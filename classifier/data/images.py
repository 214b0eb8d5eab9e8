"""Safe image decoding: an allow-list of formats, a pixel limit, and every colour mode turned into upright RGB.

Every image the workbench reads (dataset indexing, training, prediction) goes through `load_image` or
`probe_image`, so the rules live in one place:

- only JPEG (and MPO, the multi-picture JPEG phones write), PNG, WebP, BMP, GIF and TIFF are opened; Pillow is
  never allowed to try other plugins, so e.g. an EPS renamed to `.jpg` is refused before Ghostscript could run;
- the pixel count is checked from the header before any pixel data is decoded;
- truncated or corrupt files are errors (Pillow's `LOAD_TRUNCATED_IMAGES` is left at False), and every failure
  becomes an `ImageError` with a short reason;
- the result is always an 8-bit RGB image, first frame only, with EXIF orientation applied and transparency
  composited onto white.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from classifier.errors import ImageError

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
DEFAULT_MAX_PIXELS = 50_000_000

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO

NOT_ALLOWED = "not an image in an allowed format (JPEG, PNG, WebP, BMP, GIF, TIFF)"
CORRUPT = "truncated or corrupt image data"

# Transparent pixels are composited onto white: datasets are mostly product shots, logos and documents whose
# transparent background is meant to look like paper, and white is what a browser shows them on.
BACKGROUND = (255, 255, 255)

# EXIF orientation -> the transpose that makes the image upright (the same table as ImageOps.exif_transpose).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION_TAG = 0x0112
_SIGNATURES = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",  # JPEG / MPO
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
    b"II+\x00",  # BigTIFF
    b"MM\x00+",
)
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


def is_image_path(path: str | os.PathLike) -> bool:
    """True when the file name has one of `IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def load_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode `source` (a path, bytes or a binary file object) into a fully loaded, upright 8-bit RGB image.

    `name` is what error messages call the file (default: the path, or "<upload>"). With `draft_size`, a JPEG
    is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that is still at least that large. Raises `ImageError`
    and nothing else, whatever the bytes are (a non-positive `draft_size` is a ValueError).
    """
    if draft_size is not None and min(draft_size) <= 0:
        raise ValueError(f"draft_size must be positive, got {draft_size}")  # a caller bug, not a bad file
    label = _label(source, name)
    with _opened(source, label) as fp:
        return _decode(fp, label, max_pixels, draft_size, to_rgb=True)[0]


def probe_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int, str]:
    """Fully decode the image at `path` and return `(width, height, format)`, size after EXIF orientation.

    MPO is reported as "JPEG". Used at indexing time, so unusable files are found before training starts.
    """
    label = os.fsdecode(path)
    with _opened(path, label) as fp:
        _, fmt, (width, height) = _decode(fp, label, max_pixels, None, to_rgb=False)
        return width, height, fmt


def _label(source: ImageSource, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (str, os.PathLike)):
        return os.fsdecode(source)
    return "<upload>"


class _opened:
    """Context manager giving a readable binary file for any source; closes only what it opened itself."""

    def __init__(self, source: ImageSource, label: str):
        self.source = source
        self.label = label
        self.owned: BinaryIO | None = None

    def __enter__(self) -> BinaryIO:
        src = self.source
        if isinstance(src, (bytes, bytearray, memoryview)):
            return io.BytesIO(bytes(src))
        if isinstance(src, (str, os.PathLike)):
            try:
                self.owned = open(src, "rb")  # closed in __exit__
            except FileNotFoundError:
                raise ImageError(self.label, "file not found") from None
            except IsADirectoryError:
                raise ImageError(self.label, "is a directory, not an image file") from None
            except (OSError, ValueError) as e:
                raise ImageError(self.label, f"cannot read file ({getattr(e, 'strerror', None) or e})") from None
            return self.owned
        if hasattr(src, "read"):
            return src
        raise ImageError(self.label, f"cannot read an image from a {type(src).__name__}")

    def __exit__(self, *exc: object) -> None:
        if self.owned is not None:
            self.owned.close()


def _decode(
    fp: BinaryIO, label: str, max_pixels: int, draft_size: tuple[int, int] | None, *, to_rgb: bool
) -> tuple[Image.Image, str, tuple[int, int]]:
    """Open with the allow-list, check size, load frame 0, convert and orient; every failure -> `ImageError`.

    Returns (image, format, upright size). Without `to_rgb` (probing) the image is the decoded, un-rotated
    original: only its upright size is needed, so no copy is spent on rotating it.
    """
    try:
        img = Image.open(fp, formats=_allowed_formats())
        fmt = "JPEG" if img.format == "MPO" else str(img.format)
        width, height = img.size
        if width <= 0 or height <= 0:
            raise ImageError(label, "image has zero width or height")
        if width * height > max_pixels:
            raise ImageError(label, f"image of {width}x{height} pixels exceeds the limit of {max_pixels:,} pixels")
        img.seek(0)  # animated GIF/WebP/PNG, multi-page TIFF: always the first frame
        orientation = 1
        if draft_size and fmt == "JPEG":
            # JPEG EXIF sits in the header, so the orientation is known before decoding; ask for the draft size
            # in stored (un-rotated) orientation so the upright result is still at least `draft_size`.
            orientation = _orientation(img)
            dw, dh = draft_size
            img.draft("RGB", (dh, dw) if orientation in (5, 6, 7, 8) else (dw, dh))
        img.load()
        if orientation == 1:
            orientation = _orientation(img)  # PNG may keep eXIf after the pixel data, so read it after loading
        if not to_rgb:
            return img, fmt, (img.size[::-1] if orientation in (5, 6, 7, 8) else img.size)
        result = _to_rgb(img)
        if orientation in _ORIENTATION:
            result = result.transpose(_ORIENTATION[orientation])
        elif result is img and getattr(img, "n_frames", 1) > 1:
            result = img.copy()  # detach from the (possibly closed) file that later frames would be read from
        return result, fmt, result.size
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        # Pillow's own hard limit (2x Image.MAX_IMAGE_PIXELS) fired before our check could; same message.
        m = _BOMB_PIXELS.search(str(e))
        size = f"{int(m.group(1)):,} pixels" if m else "too many pixels"
        raise ImageError(label, f"image of {size} exceeds the limit of {max_pixels:,} pixels") from None
    except UnidentifiedImageError:
        # Pillow also says "cannot identify" when an allowed format's header is damaged; call that corrupt.
        raise ImageError(label, CORRUPT if _has_allowed_signature(fp) else NOT_ALLOWED) from None
    except MemoryError:
        raise ImageError(label, "not enough memory to decode the image") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError, AttributeError):
        # Pillow's ways of saying "truncated", "broken PNG", "bad palette", ...
        raise ImageError(label, CORRUPT) from None
    except Exception as e:  # noqa: BLE001 - any other decoder failure on hostile bytes is still a bad file
        raise ImageError(label, f"{CORRUPT} ({type(e).__name__})") from None


def _allowed_formats() -> list[str]:
    """The allowed formats Pillow has plugins for (a missing plugin must not turn into a KeyError)."""
    Image.init()
    return [f for f in ("JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF") if f in Image.OPEN]


def _has_allowed_signature(fp: BinaryIO) -> bool:
    """Whether the data starts like one of the allowed formats (magic bytes only, nothing is parsed)."""
    try:
        fp.seek(0)
        head = fp.read(16)
    except Exception:  # noqa: BLE001 - an unreadable stream just means "no signature"
        return False
    if not isinstance(head, bytes):
        return False
    return head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _orientation(img: Image.Image) -> int:
    """EXIF orientation 1..8; broken EXIF counts as 'no orientation' rather than making the image unusable."""
    try:
        value = img.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - corrupt EXIF blocks are common in camera files and harmless to ignore
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; alpha (or a transparent colour) is composited onto `BACKGROUND`."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I", "F") or mode.startswith("I;16"):
        gray = Image.fromarray(_to_uint8(np.asarray(img), mode))
        return gray.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, BACKGROUND)
        out.paste(rgba, mask=rgba)
        return out
    # L, 1, P, CMYK (Pillow undoes Adobe's inverted CMYK when decoding), YCbCr, HSV, ...
    return img.convert("RGB")


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale high-bit-depth grayscale to 0..255 (Pillow's convert("L") would clip 16-bit values at 255)."""
    if mode == "F":
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        peak = float(arr.max()) if arr.size else 0.0
        # Float images are usually normalised to 0..1; otherwise assume 8-bit, or 16-bit when larger.
        if peak <= 1.0:
            arr = arr * 255.0
        elif peak > 255.0:
            arr = arr * (255.0 / 65535.0)
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    # "I;16*" holds 0..65535; "I" is how Pillow has represented 16-bit PNGs, so it gets the same range.
    values = np.clip(arr.astype(np.int64), 0, 65535)
    return ((values * 255 + 32767) // 65535).astype(np.uint8)
