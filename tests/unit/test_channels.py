import numpy as np
import pytest

from gluonseg.data.channels import pair_channel, scan_masks
from gluonseg.data.label_map import LabelMap, parse_label_map
from gluonseg.errors import ClientError
from tests.support.helpers import make_channels, mask_values, write_image, write_mask


def test_pairs_by_base_name_nested_and_hidden_files_ignored(tmp_path):
    write_image(tmp_path / "img" / "a.jpg")
    write_image(tmp_path / "img" / "sub" / "b.jpeg")
    write_image(tmp_path / "img" / "c.png", fmt="PNG")
    write_image(tmp_path / "img" / ".hidden.jpg")
    write_image(tmp_path / "img" / ".cache" / "d.jpg")
    for name in ("a", "sub/b", "c"):
        write_mask(tmp_path / "ann" / f"{name}.png", mask_values())
    (tmp_path / "ann" / ".DS_Store").write_bytes(b"x")
    samples = pair_channel(tmp_path / "img", tmp_path / "ann")
    assert [s.name for s in samples] == ["a", "c", "sub/b"]
    assert samples[2].image_path.name == "b.jpeg" and samples[2].mask_path.name == "b.png"


def test_lonely_images_and_masks_are_named(tmp_path):
    for i in range(25):
        write_image(tmp_path / "train" / f"only_img_{i:02d}.jpg")
    write_image(tmp_path / "train" / "ok.jpg")
    write_mask(tmp_path / "train_annotation" / "ok.png", mask_values())
    write_mask(tmp_path / "train_annotation" / "orphan.png", mask_values())
    with pytest.raises(ClientError) as err:
        pair_channel(tmp_path / "train", tmp_path / "train_annotation")
    text = str(err.value)
    assert "25 image(s) in 'train' have no mask" in text
    assert "train/only_img_00.jpg" in text and "train/only_img_19.jpg" in text and "only_img_20.jpg" not in text
    assert "(and 5 more)" in text
    assert "1 mask(s) in 'train_annotation' have no image" in text and "train_annotation/orphan.png" in text


def test_empty_and_missing_channels(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "notes.txt").write_text("x")
    write_mask(tmp_path / "train_annotation" / "a.png", mask_values())
    with pytest.raises(ClientError, match=r"The channel 'train' holds no images .*notes.txt"):
        pair_channel(tmp_path / "train", tmp_path / "train_annotation")
    with pytest.raises(ClientError, match="The channel 'validation' is missing"):
        pair_channel(tmp_path / "validation", tmp_path / "train_annotation")


def _pairs(tmp_path, masks, images="img", annotations="ann"):
    for name, values, mode in masks:
        h, w = values.shape
        write_image(tmp_path / images / f"{name}.jpg", w, h)
        write_mask(tmp_path / annotations / f"{name}.png", values, mode=mode)
    return pair_channel(tmp_path / images, tmp_path / annotations)


def test_scan_accepts_p_and_l_masks_and_counts_classes(tmp_path):
    m = mask_values(classes=3)
    samples = _pairs(tmp_path, [("a", m, "P"), ("b", m, "L")])
    result = scan_masks(samples, LabelMap.identity(), 3, "train_annotation", workers=1)
    assert result.count == 2
    expected = np.bincount(m.ravel(), minlength=256) * 2
    assert np.array_equal(result.class_pixels, expected)
    assert result.classes_present(3) == [0, 1, 2]


def test_scan_names_files_and_values_outside_the_classes(tmp_path):
    bad = mask_values(classes=3)
    bad[5, 5] = 7
    bad[6, 6] = 200
    samples = _pairs(
        tmp_path, [("good", mask_values(classes=3), "P"), ("bad", bad, "P")], "validation", "validation_annotation"
    )
    with pytest.raises(ClientError) as err:
        scan_masks(samples, LabelMap.identity(), 3, "validation_annotation", workers=1)
    text = str(err.value)
    assert "1 mask(s) in 'validation_annotation' hold values outside 0..2 and 255 (ignore): " in text
    assert "values 7, 200 in validation_annotation/bad.png." in text and "good" not in text


def test_values_are_checked_after_the_label_map(tmp_path):
    m = np.zeros((30, 40), np.uint8)
    m[10:20, 10:20] = 4
    samples = _pairs(tmp_path, [("a", m, "L")])
    with pytest.raises(ClientError, match=r"outside 0..1 and 255"):
        scan_masks(samples, LabelMap.identity(), 2, "ann", workers=1)
    with pytest.raises(ClientError) as err:
        scan_masks(samples, parse_label_map({"scale": 2}, "label_map/train_label_map.json"), 2, "ann", workers=1)
    # The value as it is in the file, the class it became, and the map that did it, by file name.
    assert (
        "1 mask(s) in 'ann' hold values outside 0..1 and 255 (ignore) after applying the label map "
        'label_map/train_label_map.json ({"scale": 2}): values 4 (mapped to class 2) in ann/a.png.'
    ) in str(err.value)
    result = scan_masks(samples, parse_label_map({"scale": 4}, "x"), 2, "ann", workers=1)
    assert result.classes_present(2) == [0, 1]


def test_scan_rejects_rgb_16bit_size_mismatch_and_unreadable(tmp_path):
    m = mask_values()
    samples = _pairs(tmp_path, [("rgb", m, "RGB"), ("deep", m, "I;16"), ("ok", m, "P")])
    write_image(tmp_path / "img" / "small.jpg", 20, 10)
    write_mask(tmp_path / "ann" / "small.png", m)
    write_image(tmp_path / "img" / "broken.jpg")
    (tmp_path / "ann" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    samples = pair_channel(tmp_path / "img", tmp_path / "ann")
    with pytest.raises(ClientError) as err:
        scan_masks(samples, LabelMap.identity(), 3, "ann", workers=1)
    text = str(err.value)
    assert "4 mask(s) in 'ann' cannot be used" in text
    assert "ann/rgb.png: the mask is a colour (RGB) image" in text
    assert "ann/deep.png: the mask is a 16-bit image" in text
    assert "ann/small.png: mask is 40x30 but its image img/small.jpg is 20x10" in text
    assert "ann/broken.png: cannot decode image" in text
    assert "image(s) in" not in text  # the images are fine


def test_scan_in_worker_processes_gives_the_same_result(tmp_path):
    make_channels(tmp_path, n_train=210, n_val=1, size=(16, 12))
    samples = pair_channel(tmp_path / "train", tmp_path / "train_annotation")
    one = scan_masks(samples, LabelMap.identity(), 3, "train_annotation", workers=1)
    two = scan_masks(samples, LabelMap.identity(), 3, "train_annotation", workers=2)
    assert one.count == two.count == 210
    assert np.array_equal(one.class_pixels, two.class_pixels)


def test_truncated_training_files_are_refused_even_after_gluoncv_import(tmp_path):
    import gluoncv  # noqa: F401 - turns PIL's LOAD_TRUNCATED_IMAGES on globally
    from PIL import ImageFile

    from gluonseg.data.images import load_image

    ImageFile.LOAD_TRUNCATED_IMAGES = True
    path = write_image(tmp_path / "a.jpg", 200, 150)
    path.write_bytes(path.read_bytes()[:-600])
    with pytest.raises(ClientError, match="a.jpg: cannot decode image"):
        load_image(path, str(path))


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "TIFF", "PPM"])
def test_training_files_in_other_formats_are_named_not_decoded(tmp_path, fmt):
    """Only the JPEG and PNG decoders see training bytes, whatever the file is named."""
    import io

    from PIL import Image

    from gluonseg.data.images import image_size, load_image, load_mask

    buffer = io.BytesIO()
    Image.new("RGB" if fmt != "GIF" else "P", (8, 6)).save(buffer, format=fmt)
    Image.open(io.BytesIO(buffer.getvalue())).load()  # PIL itself reads it: only our restriction refuses it
    disguised = tmp_path / "img_0001.jpg"
    disguised.write_bytes(buffer.getvalue())
    for read in (load_image, load_mask, image_size):
        with pytest.raises(ClientError, match="img_0001.jpg: not a readable JPEG or PNG image"):
            read(disguised, "img_0001.jpg")
        with pytest.raises(ClientError, match="record 7: not a readable JPEG or PNG image"):
            read(buffer.getvalue(), "record 7")


def _jpeg_claiming(path, width, height):
    """A small real JPEG whose SOF header is rewritten to claim width x height pixels (a header bomb)."""
    data = bytearray(write_image(path, 16, 12).read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    path.write_bytes(bytes(data))
    return path


def test_image_headers_are_checked_in_the_same_pass_and_named_under_their_channel(tmp_path):
    """A header bomb used to end the job with AlgorithmError: DecompressionBombError; a broken image was
    reported as a mask of the annotation channel."""
    _pairs(tmp_path, [("2012_000002", mask_values(), "RGB"), ("ok", mask_values(), "P")], "train", "train_annotation")
    _jpeg_claiming(tmp_path / "train" / "2012_000000.jpg", 60000, 60000)
    (tmp_path / "train" / "2012_000001.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    write_mask(tmp_path / "train_annotation" / "2012_000000.png", mask_values(16, 12))
    write_mask(tmp_path / "train_annotation" / "2012_000001.png", mask_values(16, 12))
    samples = pair_channel(tmp_path / "train", tmp_path / "train_annotation")
    with pytest.raises(ClientError) as err:
        scan_masks(samples, LabelMap.identity(), 3, "train_annotation", workers=1)
    text = str(err.value)
    assert text.startswith("2 image(s) in 'train' cannot be used: train/2012_000000.jpg: the image is too large")
    assert "a training image or mask may have at most 178956970 pixels" in text
    assert "train/2012_000001.jpg: cannot decode image (" in text
    # Listed with the masks' problems, each under its own channel.
    assert (
        "; 1 mask(s) in 'train_annotation' cannot be used: train_annotation/2012_000002.png: the mask is a colour"
        in text
    )
    assert "train_annotation/2012_000000.png" not in text and "train_annotation/2012_000001.png" not in text


def test_an_image_header_over_the_bound_is_refused_with_its_size(tmp_path, monkeypatch):
    import gluonseg.data.images as images

    path = write_image(tmp_path / "validation" / "big.jpg", 40, 30)
    monkeypatch.setattr(images, "MAX_TRAINING_PIXELS", 1000)  # the bound PIL itself does not enforce
    with pytest.raises(ClientError) as err:
        images.image_size(path, "validation/big.jpg")
    assert str(err.value) == (
        "validation/big.jpg: the image is too large (40x30 pixels); a training image or mask may have at most "
        "1000 pixels"
    )
    with pytest.raises(ClientError, match=r"^validation/big.jpg: the image is too large \(40x30 pixels\)"):
        images.load_image(path, "validation/big.jpg")


def test_every_file_is_named_channel_relative_with_its_extension(tmp_path):
    write_image(tmp_path / "validation" / "sub" / "2012_000013.jpg")
    write_mask(tmp_path / "validation_annotation" / "sub" / "2012_000013.png", mask_values(classes=30))
    [sample] = pair_channel(tmp_path / "validation", tmp_path / "validation_annotation")
    assert sample.image_file == "validation/sub/2012_000013.jpg"
    assert sample.mask_file == "validation_annotation/sub/2012_000013.png"
    with pytest.raises(ClientError, match=r" in validation_annotation/sub/2012_000013.png\. Masks must"):
        scan_masks([sample], LabelMap.identity(), 3, "validation_annotation", workers=1)
    write_image(tmp_path / "validation" / "sub" / "2012_000013.png", fmt="PNG")
    with pytest.raises(ClientError) as err:
        pair_channel(tmp_path / "validation", tmp_path / "validation_annotation")
    assert "validation/sub/2012_000013.jpg and validation/sub/2012_000013.png" in str(err.value)


def test_the_dataset_names_files_as_the_scan_does(tmp_path):
    from gluonseg.data.dataset import SegmentationDataset

    write_image(tmp_path / "train" / "a.jpg", 40, 30)
    write_mask(tmp_path / "train_annotation" / "a.png", mask_values())
    [sample] = pair_channel(tmp_path / "train", tmp_path / "train_annotation")
    (tmp_path / "train" / "a.jpg").write_bytes(b"garbage")
    with pytest.raises(ClientError, match=r"^train/a.jpg: not a readable JPEG or PNG image"):
        SegmentationDataset([sample], None, "val_whole").load(0)
