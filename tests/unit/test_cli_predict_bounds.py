"""`gluonseg predict --max-native-pixels N` bounds the native scale, not the picture decoder."""

from __future__ import annotations

import numpy as np
from PIL import Image

from gluonseg.cli import main
from tests.support.models import image_of, make_model_dir


def test_max_native_pixels_scales_a_large_picture_down_instead_of_refusing_it(tmp_path):
    model = make_model_dir(tmp_path / "model", "fcn")
    picture = tmp_path / "big.png"
    Image.fromarray(image_of(1200, 1500, seed=4)).save(picture)  # 1.8 MP: over the bound below, under 36 MP
    out = tmp_path / "out"
    code = main(["predict", "--model-dir", str(model), str(picture), "--out", str(out), "--max-native-pixels", "4096"])
    assert code == 0  # it was once the decode bound, so this picture was refused as too large
    mask = Image.open(out / "big_mask.png")
    assert mask.size == (1500, 1200) and mask.mode == "P"
    assert int(np.asarray(mask).max()) < 4
