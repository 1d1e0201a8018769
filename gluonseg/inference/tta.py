"""Test-time augmentation: which views of a picture are predicted and averaged (no numpy, no MXNet).

`--tta flip`, `--tta scales=0.75,1,1.25` or `--tta flip,scales=0.75,1,1.25` (server: GLUONSEG_TTA). Each
scale is a view of the picture at that multiple of the scale's working resolution (native: the picture's
size, still under the native-scale bound; crop: the short side at scale x crop_size; slide: the slide
resolution); with flip, each scale is also predicted on the left-right mirrored picture and its answer
mirrored back. The softmax probabilities of all views, resized to the picture's size, are averaged, as
GluonCV's MultiEvalModel averages its scales and flips (gluonseg.inference.postprocess.combine); the mask is
their argmax. No augmentation is the single view (1.0, not flipped).
"""

from __future__ import annotations

from dataclasses import dataclass

from gluonseg.errors import ClientError

MAX_SCALE = 4.0  # a view's pixels grow with the square of its scale


@dataclass(frozen=True)
class TTA:
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    @property
    def views(self) -> list[tuple[float, bool]]:
        """(scale, flipped) for every view, in the order they are averaged."""
        return [(scale, flipped) for scale in self.scales for flipped in ((False, True) if self.flip else (False,))]

    def __str__(self) -> str:
        parts = ["flip"] if self.flip else []
        if self.scales != (1.0,):
            parts.append("scales=" + ",".join(f"{s:g}" for s in self.scales))
        return ",".join(parts) or "none"


NO_TTA = TTA()


def parse_tta(value: str | None, name: str = "--tta") -> TTA:
    """'flip', 'scales=0.75,1,1.25', 'flip,scales=...' (or 'none', '' or None: no augmentation); else ClientError."""
    text = (value or "").strip().lower()
    if text in ("", "none"):
        return NO_TTA
    flip, scales = False, []
    in_scales = False
    for token in (t.strip() for t in text.split(",")):
        if token == "flip":
            flip, in_scales = True, False
        elif token.startswith("scales="):
            in_scales = True
            scales.append(_scale(token.removeprefix("scales="), name, value))
        elif in_scales and token:
            scales.append(_scale(token, name, value))
        else:
            raise ClientError(f"{name} must be flip, scales=S1,S2,... or flip,scales=S1,S2,...; got {value!r}")
    if len(set(scales)) != len(scales):
        raise ClientError(f"{name} lists a scale twice: {value!r}")
    return TTA(flip, tuple(scales) or (1.0,))


def _scale(token: str, name: str, value: str | None) -> float:
    try:
        scale = float(token)
    except ValueError:
        raise ClientError(f"{name}: scale {token!r} is not a number (in {value!r})") from None
    if not 0 < scale <= MAX_SCALE:
        raise ClientError(f"{name}: scales must be in (0, {MAX_SCALE:g}], got {token} (in {value!r})")
    return scale
