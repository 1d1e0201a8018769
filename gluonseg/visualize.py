"""`gluonseg predict`: masks and overlays for a few pictures, to look at what a model does.

For each input X.jpg the output folder gets:
- `X_mask.png`: the class-id mask as an indexed PNG (mode P, the model's palette, VOC by default):
  the very bytes the server answers with Accept: image/png.
- `X_overlay.png`: the picture, same size, with each non-background pixel blended with its class colour
  and a legend (colour swatch + class name, for the classes present) in a box in the top-left corner,
  drawn inside the picture so the overlay keeps the picture's size.

Pictures are read as the server reads request bodies (`decode_image`: JPEG or PNG, EXIF orientation
applied), and predicted by the same Predictor. A file that cannot be read or decoded is reported with
its reason and the others go on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from gluonseg.palette import BAND_PIXELS, blend, colour_table

log = logging.getLogger(__name__)

IGNORE = 255
LEGEND_BOX = (255, 255, 255, 210)  # nearly opaque white under the legend text
LEGEND_TEXT = (0, 0, 0, 255)


@dataclass
class PredictResult:
    source: str
    ok: bool
    reason: str = ""
    mask_path: Path | None = None
    overlay_path: Path | None = None


def classes_present(mask: np.ndarray) -> list[int]:
    """The ids in a class-id mask, ascending; counted band by band (bincount widens to int64: 8 bytes a pixel)."""
    if mask.dtype != np.uint8:
        return np.unique(mask).tolist()
    counts = np.zeros(256, dtype=np.int64)
    rows = max(1, BAND_PIXELS // max(1, mask.shape[-1]))
    for top in range(0, mask.shape[0], rows):
        counts += np.bincount(mask[top : top + rows].ravel(), minlength=256)
    return np.flatnonzero(counts).tolist()


def _legend_font(height: int, width: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # Pillow's bundled font scales with FreeType; a build without it has only the fixed bitmap font.
    size = int(min(max(min(height, width) / 30, 10), 32))
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


def draw_legend(picture: Image.Image, entries: list[tuple[str, tuple[int, int, int]]]) -> Image.Image:
    """`picture` (RGB) with a box in its top-left corner listing (name, colour) entries; clipped to the picture.

    Only the box's own region is composited, so a large picture is not copied to RGBA and back.
    """
    if not entries:
        return picture
    font = _legend_font(picture.height, picture.width)
    measure = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
    boxes = [measure.textbbox((0, 0), name, font=font) for name, _ in entries]
    line = max(max(b[3] - b[1] for b in boxes), 8)
    swatch = line
    pad = max(2, line // 4)
    box_w = pad + swatch + pad + max(b[2] for b in boxes) + pad
    box_h = pad + len(entries) * (line + pad)
    region = (0, 0, min(box_w, picture.width), min(box_h, picture.height))
    layer = Image.new("RGBA", region[2:], (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    draw.rectangle((0, 0, box_w - 1, box_h - 1), fill=LEGEND_BOX)
    y = pad
    for (name, colour), bbox in zip(entries, boxes):
        draw.rectangle((pad, y, pad + swatch - 1, y + swatch - 1), fill=(*colour, 255), outline=LEGEND_TEXT)
        draw.text((pad + swatch + pad, y - bbox[1]), name, font=font, fill=LEGEND_TEXT)
        y += line + pad
    corner = Image.alpha_composite(picture.crop(region).convert("RGBA"), layer).convert("RGB")
    picture.paste(corner, region[:2])
    return picture


def _class_name(class_id: int, class_names: list[str]) -> str:
    if class_id < len(class_names):
        return class_names[class_id]
    return "ignore" if class_id == IGNORE else f"class_{class_id}"  # ground-truth masks carry 255 too


def overlay(
    image: np.ndarray | Image.Image,
    mask: np.ndarray,
    palette: list[int],
    class_names: list[str],
    alpha: float = 0.5,
    legend: bool = True,
    in_place: bool = False,
) -> Image.Image:
    """An RGB picture the size of `image`: the mask's colours blended in (background left as is) and a
    legend of the classes present in the top-left corner.

    `in_place`: blend into `image` itself (a writable uint8 array the caller no longer needs), which saves a
    picture-sized copy on large pictures.
    """
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    mask = np.asarray(mask)
    reuse = in_place and pixels is image and pixels.flags.writeable
    picture = Image.fromarray(blend(pixels, mask, palette, alpha, out=pixels if reuse else None))
    if not legend:
        return picture
    colours = colour_table(palette)
    entries = [(_class_name(c, class_names), tuple(int(v) for v in colours[c])) for c in classes_present(mask)]
    return draw_legend(picture, entries)


def output_paths(out: Path, source: Path) -> tuple[Path, Path]:
    return out / f"{source.stem}_mask.png", out / f"{source.stem}_overlay.png"


def _predict_one(
    predictor, source: Path, out: Path, alpha: float, decode_max_pixels: int, progress: bool | None
) -> PredictResult:
    from gluonseg.codecs.content_types import X_IMAGE
    from gluonseg.codecs.decode import decode_image
    from gluonseg.codecs.encode import encode_png_mask
    from gluonseg.progress import WindowProgress

    image = decode_image(source.read_bytes(), X_IMAGE, decode_max_pixels=decode_max_pixels)
    with WindowProgress(progress, source.name) as windows:
        mask = predictor.predict(image, progress=windows).mask
    mask_path, overlay_path = output_paths(out, source)
    mask_path.write_bytes(encode_png_mask(mask, predictor.palette))
    overlay(image, mask, predictor.palette, predictor.class_names, alpha, in_place=True).save(overlay_path, "PNG")
    return PredictResult(str(source), True, mask_path=mask_path, overlay_path=overlay_path)


def predict_files(
    model_dir: Path,
    images: list[Path],
    out: Path,
    alpha: float = 0.5,
    progress: bool | None = None,
    decode_max_pixels: int | None = None,
    **inference: Any,
) -> list[PredictResult]:
    """Write OUT/<stem>_mask.png and OUT/<stem>_overlay.png for each image; one result per input, in order.

    A bad input (missing, not JPEG/PNG, corrupt, too large, or the same stem as an earlier input) is a
    failed result with its reason; the model folder itself must load (else ClientError).
    """
    from gluonseg.codecs.decode import DEFAULT_DECODE_MAX_PIXELS
    from gluonseg.errors import ClientError
    from gluonseg.inference.loading import load_predictor
    from gluonseg.progress import with_progress

    if not 0.0 <= alpha <= 1.0:
        raise ClientError(f"alpha must be between 0 and 1, got {alpha}")
    predictor = load_predictor(Path(model_dir), **inference)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stems: dict[str, str] = {}
    results: list[PredictResult] = []
    for source in with_progress([Path(p) for p in images], len(images), "predict", progress):
        if source.stem in stems:
            reason = f"its outputs would overwrite those of {stems[source.stem]} (same base name); rename one"
            results.append(PredictResult(str(source), False, reason))
            continue
        stems[source.stem] = str(source)
        try:
            bound = decode_max_pixels or DEFAULT_DECODE_MAX_PIXELS
            results.append(_predict_one(predictor, source, out, alpha, bound, progress))
        except ClientError as exc:  # RequestError included: what the server would refuse
            results.append(PredictResult(str(source), False, str(exc)))
        except OSError as exc:
            results.append(PredictResult(str(source), False, exc.strerror or str(exc)))
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others
            log.exception("failed on %s", source)
            results.append(PredictResult(str(source), False, f"internal error: {type(exc).__name__}: {exc}"))
        if not results[-1].ok:
            log.error("%s: %s", source, results[-1].reason)
    return results
