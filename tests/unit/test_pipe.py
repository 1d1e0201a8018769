"""Pipe-mode input through real FIFOs: a writer thread plays SageMaker while the code under test reads."""

from __future__ import annotations

import io
import os
import stat
import threading
import time
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from PIL import Image

from gluonseg.data.label_map import parse_label_map
from gluonseg.data.pipe import iter_pipe_pairs, iter_pipe_samples, pipe_path, wait_for_pipe
from gluonseg.errors import ClientError
from gluonseg.recordio import encode_record

# Every test here may block on a FIFO; none may hang the suite.
pytestmark = pytest.mark.timeout(30)


def jpeg(width: int, height: int, seed: int, exif_orientation: int | None = None) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    Image.fromarray(pixels).save(buf, "JPEG", quality=90, **kwargs)
    return buf.getvalue()


def class_mask(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, 4, (height, width), dtype=np.uint8)
    mask[0, :] = 255  # an ignore border, as VOC masks have
    return mask


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, "PNG")
    return buf.getvalue()


def dataset(n: int, seed: int = 0, width: int = 64, height: int = 48) -> list[tuple[bytes, np.ndarray]]:
    return [(jpeg(width, height, seed + i), class_mask(width, height, seed + i)) for i in range(n)]


def stream(pairs: list[tuple[bytes, np.ndarray]]) -> bytes:
    return b"".join(encode_record(img) + encode_record(png(mask)) for img, mask in pairs)


def decoded(jpeg_bytes: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg_bytes)).convert("RGB"))


class FifoWriter:
    """Plays SageMaker: (optionally later) makes each FIFO, then writes its bytes in small pieces.

    Opening a FIFO for writing blocks until the reader opens it, so this runs in a daemon thread
    and the test reads in the main thread. A reader that stops early makes the write fail with
    BrokenPipeError, which is recorded, not raised.
    """

    def __init__(self, feeds: list[tuple[Path, bytes]], create_after_s: float | None = None, piece: int = 1000):
        self.feeds = feeds
        self.create_after_s = create_after_s
        self.piece = piece
        self.broken_pipe = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            for path, data in self.feeds:
                if self.create_after_s is not None:
                    time.sleep(self.create_after_s)
                    os.mkfifo(path)
                with open(path, "wb", buffering=0) as f:
                    for start in range(0, len(data), self.piece):
                        f.write(data[start : start + self.piece])
        except BrokenPipeError:
            self.broken_pipe = True
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc

    def start(self) -> FifoWriter:
        if self.create_after_s is None:
            for path, _ in self.feeds:
                os.mkfifo(path)
        self.thread.start()
        return self

    def finish(self) -> None:
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "the writer is still blocked"
        assert self.error is None, self.error


def feed(path: Path, data: bytes, piece: int = 1000) -> FifoWriter:
    return FifoWriter([(path, data)], piece=piece).start()


def test_pipe_path_is_channel_underscore_epoch(tmp_path):
    assert pipe_path(tmp_path, "train", 0) == tmp_path / "train_0"
    assert pipe_path(tmp_path, "validation", 12) == tmp_path / "validation_12"


def test_samples_through_a_real_fifo(tmp_path):
    pairs = dataset(12, width=128, height=96)
    data = stream(pairs)
    assert len(data) > 2 * 65536  # more than a pipe buffer: writer and reader must take turns
    path = tmp_path / "train_0"
    writer = feed(path, data, piece=777)
    got = list(iter_pipe_samples(path))
    writer.finish()
    assert stat.S_ISFIFO(os.stat(path).st_mode)
    assert [name for name, _, _ in got] == [f"train_0: pair {k} (records {2 * k} and {2 * k + 1})" for k in range(12)]
    for (_, image, mask), (jpeg_bytes, expected_mask) in zip(got, pairs):
        assert image.dtype == np.uint8 and image.shape == (96, 128, 3)
        np.testing.assert_array_equal(image, decoded(jpeg_bytes))
        np.testing.assert_array_equal(mask, expected_mask)


def test_pairs_are_raw_bytes_in_stream_order(tmp_path):
    pairs = dataset(3)
    path = tmp_path / "validation_0"
    writer = feed(path, stream(pairs))
    got = list(iter_pipe_pairs(path))
    writer.finish()
    assert [(img, msk) for _, img, msk in got] == [(img, png(mask)) for img, mask in pairs]


def test_stream_written_by_mxnet(tmp_path):
    pairs = dataset(2, seed=5)
    rec = tmp_path / "mx.rec"
    writer = mx.recordio.MXRecordIO(str(rec), "w")
    for img, mask in pairs:
        writer.write(img)
        writer.write(png(mask))
    writer.close()
    path = tmp_path / "train_0"
    fifo = feed(path, rec.read_bytes(), piece=333)
    got = list(iter_pipe_samples(path))
    fifo.finish()
    assert len(got) == 2
    np.testing.assert_array_equal(got[1][2], pairs[1][1])


def test_regular_file_works_too(tmp_path):
    path = tmp_path / "train_0"
    path.write_bytes(stream(dataset(2)))
    assert len(list(iter_pipe_samples(path))) == 2


def test_label_map_is_applied(tmp_path):
    mask = np.array([[0, 1, 2, 3], [4, 5, 6, 255]], dtype=np.uint8)
    path = tmp_path / "train_0"
    writer = feed(path, encode_record(jpeg(4, 2, 1)) + encode_record(png(mask)))
    [(_, _, got)] = list(iter_pipe_samples(path, parse_label_map({"scale": 2}, "label map")))
    writer.finish()
    np.testing.assert_array_equal(got, [[0, 0, 1, 1], [2, 2, 3, 255]])


def test_palette_mask_gives_indices(tmp_path):
    mask = class_mask(16, 8, 3)
    indexed = Image.frombytes("P", (16, 8), mask.tobytes())
    indexed.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])  # colours differ from indices
    buf = io.BytesIO()
    indexed.save(buf, "PNG")
    path = tmp_path / "train_0"
    writer = feed(path, encode_record(jpeg(16, 8, 3)) + encode_record(buf.getvalue()))
    [(_, _, got)] = list(iter_pipe_samples(path))
    writer.finish()
    np.testing.assert_array_equal(got, mask)


def test_exif_orientation_is_not_applied(tmp_path):
    # masks are drawn on the stored pixel grid; a rotated image would no longer match its mask
    path = tmp_path / "train_0"
    writer = feed(path, encode_record(jpeg(40, 30, 2, exif_orientation=6)) + encode_record(png(class_mask(40, 30, 2))))
    [(_, image, mask)] = list(iter_pipe_samples(path))
    writer.finish()
    assert image.shape == (30, 40, 3) and mask.shape == (30, 40)


def test_reader_may_stop_early(tmp_path):
    path = tmp_path / "train_0"
    # far more than the pipe buffer and the reader's buffer hold, so the writer is still writing
    writer = feed(path, stream(dataset(1)) + encode_record(os.urandom(3_000_000)), piece=65536)
    samples = iter_pipe_samples(path)
    first = next(samples)
    samples.close()  # closes the FIFO: the writer must not stay blocked
    writer.finish()
    assert first[0].startswith("train_0: pair 0")
    assert writer.broken_pipe


def test_pipe_appearing_late_is_waited_for(tmp_path):
    path = pipe_path(tmp_path, "train", 0)
    writer = FifoWriter([(path, stream(dataset(1)))], create_after_s=0.4).start()
    started = time.monotonic()
    assert wait_for_pipe(path, timeout_s=20, poll_s=0.02) == path
    assert time.monotonic() - started >= 0.3
    assert stat.S_ISFIFO(os.stat(path).st_mode)
    assert len(list(iter_pipe_samples(path))) == 1
    writer.finish()


def test_epochs_are_read_in_turn(tmp_path):
    epochs = [dataset(2, seed=10), dataset(3, seed=20)]
    paths = [pipe_path(tmp_path, "train", e) for e in range(2)]
    writer = FifoWriter(list(zip(paths, [stream(p) for p in epochs])), create_after_s=0.1).start()
    for epoch, pairs in enumerate(epochs):
        path = wait_for_pipe(pipe_path(tmp_path, "train", epoch), timeout_s=20, poll_s=0.02)
        got = list(iter_pipe_samples(path))
        assert [name.split(":")[0] for name, _, _ in got] == [f"train_{epoch}"] * len(pairs)
        for (_, _, mask), (_, expected) in zip(got, pairs):
            np.testing.assert_array_equal(mask, expected)
    writer.finish()


def test_pipe_that_never_appears_times_out_naming_it(tmp_path):
    (tmp_path / "train").mkdir()  # what a File-mode channel would have left
    path = pipe_path(tmp_path, "train", 0)
    started = time.monotonic()
    with pytest.raises(ClientError) as err:
        wait_for_pipe(path, timeout_s=0.3, poll_s=0.05)
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 5
    text = str(err.value)
    assert f"{path} did not appear within 0.3 s" in text
    assert "holds: train" in text


def test_folder_in_place_of_the_pipe_is_refused(tmp_path):
    path = pipe_path(tmp_path, "train", 0)
    path.mkdir()
    with pytest.raises(ClientError, match="is a folder"):
        wait_for_pipe(path, timeout_s=0.1)


def test_stream_cut_mid_record(tmp_path):
    pairs = dataset(3)
    data = stream(pairs[:2]) + encode_record(pairs[2][0])[:100]
    path = tmp_path / "train_0"
    writer = feed(path, data)
    names = []
    with pytest.raises(ClientError) as err:
        for name, _, _ in iter_pipe_samples(path):
            names.append(name)
    writer.finish()
    assert len(names) == 2  # the whole pairs before the cut were delivered
    text = str(err.value)
    assert text.startswith("train_0: record 4 (0-based")
    assert "the stream ended inside a record" in text


def test_odd_record_count(tmp_path):
    pairs = dataset(4)
    path = tmp_path / "validation_0"
    writer = feed(path, stream(pairs) + encode_record(jpeg(8, 8, 9)))
    with pytest.raises(ClientError) as err:
        list(iter_pipe_pairs(path))
    writer.finish()
    text = str(err.value)
    assert text.startswith("validation_0: the stream ended after an image record without its annotation (record 8")
    assert "'source-ref'" in text


def test_undecodable_image(tmp_path):
    pairs = dataset(3)
    data = stream(pairs[:1]) + encode_record(b"this is not a JPEG") + encode_record(png(pairs[1][1]))
    path = tmp_path / "validation_0"
    writer = feed(path, data + stream(pairs[2:]))
    reason = r"^validation_0: record 2 \(image of pair 1\): not a readable JPEG or PNG image"
    with pytest.raises(ClientError, match=reason):
        list(iter_pipe_samples(path))
    writer.finish()


def test_undecodable_annotation(tmp_path):
    data = encode_record(jpeg(8, 8, 0)) + encode_record(b"\x89PNG broken")
    path = tmp_path / "train_0"
    writer = feed(path, data)
    reason = r"^train_0: record 1 \(annotation of pair 0\): not a readable JPEG or PNG image"
    with pytest.raises(ClientError, match=reason):
        list(iter_pipe_samples(path))
    writer.finish()


def test_rgb_mask_is_refused(tmp_path):
    rgb_mask = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb_mask[:4] = (128, 0, 0)  # a VOC-style colour mask
    path = tmp_path / "train_0"
    writer = feed(path, stream(dataset(2)) + encode_record(jpeg(8, 8, 1)) + encode_record(png(rgb_mask)))
    with pytest.raises(ClientError) as err:
        list(iter_pipe_samples(path))
    writer.finish()
    text = str(err.value)
    assert text.startswith("train_0: record 5 (annotation of pair 2): the mask is a colour (RGB) image")


def test_swapped_attributes_are_explained(tmp_path):
    img, mask = dataset(1)[0]
    path = tmp_path / "train_0"
    writer = feed(path, encode_record(png(mask)) + encode_record(img))
    with pytest.raises(ClientError) as err:
        list(iter_pipe_samples(path))
    writer.finish()
    text = str(err.value)
    assert text.startswith("train_0: record 1 (annotation of pair 0)")
    assert "this record is a JPEG" in text and "['source-ref', '<label>-ref']" in text


def test_image_and_mask_sizes_must_match(tmp_path):
    path = tmp_path / "train_0"
    writer = feed(path, stream(dataset(1)) + encode_record(jpeg(32, 24, 1)) + encode_record(png(class_mask(24, 32, 1))))
    with pytest.raises(ClientError) as err:
        list(iter_pipe_samples(path))
    writer.finish()
    text = str(err.value)
    assert text.startswith("train_0: pair 1 (records 2 and 3): the annotation is 24x32 but its image is 32x24")
    assert "EXIF" in text


def test_plain_bytes_without_recordio_wrapping(tmp_path):
    # RecordWrapperType 'None' would stream the raw JPEG
    path = tmp_path / "train_0"
    writer = feed(path, jpeg(16, 16, 0))
    with pytest.raises(ClientError, match=r"^train_0: record 0 \(0-based.*magic number.*RecordWrapperType 'RecordIO'"):
        list(iter_pipe_pairs(path))
    writer.finish()
