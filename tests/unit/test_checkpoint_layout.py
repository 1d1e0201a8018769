"""Checkpoint folders: each one complete on its own, the best weights carried by hard link (no extra disk)."""

from __future__ import annotations

import errno
import os

import mxnet as mx
import numpy as np
import pytest

from gluonseg import files
from gluonseg.training.checkpoint import KEEP, best_params, find_checkpoint, save_checkpoint


def net_and_trainer():
    net = mx.gluon.nn.Dense(2, in_units=3)
    net.initialize(mx.init.Constant(0.0))
    trainer = mx.gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    return net, trainer


def set_weight(net, value: float) -> None:
    net.weight.set_data(mx.nd.full((2, 3), value))


def weight_in(path) -> float:
    net = mx.gluon.nn.Dense(2, in_units=3)
    net.load_parameters(str(path))
    return float(net.weight.data().asnumpy()[0, 0])


def test_best_weights_carry_over_by_link_and_survive_pruning(tmp_path):
    net, trainer = net_and_trainer()
    folders = []
    for epoch, (value, is_best) in enumerate([(1.0, True), (2.0, False), (3.0, False), (4.0, False)]):
        set_weight(net, value)
        folders.append(save_checkpoint(tmp_path, net, trainer, {"epoch": epoch}, is_best=is_best))
    newest = find_checkpoint(tmp_path)
    assert newest == folders[-1]
    # Only KEEP folders remain, yet the newest still holds epoch 0's weights as its best.
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == [f.name for f in folders[-KEEP:]]
    assert weight_in(best_params(newest)) == 1.0
    assert weight_in(newest / "net.params") == 4.0
    assert os.path.samefile(best_params(newest), best_params(folders[-2]))

    set_weight(net, 5.0)
    latest = save_checkpoint(tmp_path, net, trainer, {"epoch": 4}, is_best=True)
    assert os.path.samefile(best_params(latest), latest / "net.params")
    assert weight_in(best_params(latest)) == 5.0


def test_a_checkpoint_before_any_finished_epoch_has_no_best(tmp_path):
    net, trainer = net_and_trainer()
    folder = save_checkpoint(tmp_path, net, trainer, {"epoch": -1})
    assert best_params(folder) is None
    assert find_checkpoint(tmp_path) == folder  # still a complete checkpoint to resume from


def test_link_or_copy_copies_where_links_are_refused(tmp_path, monkeypatch):
    src = tmp_path / "a.params"
    src.write_bytes(np.arange(1000, dtype=np.uint8).tobytes())
    linked = tmp_path / "linked"
    files.link_or_copy(src, linked)
    assert os.path.samefile(src, linked)

    def refuse(*_args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(files.os, "link", refuse)
    copied = tmp_path / "copied"
    copied.write_bytes(b"older content is replaced")
    files.link_or_copy(src, copied)
    assert copied.read_bytes() == src.read_bytes() and not os.path.samefile(src, copied)
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("best_is_last", [True, False])
def test_model_folder_shares_one_file_when_the_last_epoch_was_the_best(tmp_path, best_is_last, monkeypatch):
    from gluonseg import artifacts

    monkeypatch.setattr(artifacts, "export_symbol", lambda *a: None)
    monkeypatch.setattr(artifacts, "write_hyperparams", lambda *a: None)
    net, trainer = net_and_trainer()
    set_weight(net, 1.0)
    save_checkpoint(tmp_path / "ckpt", net, trainer, {"epoch": 0}, is_best=True)
    set_weight(net, 2.0)
    last = save_checkpoint(tmp_path / "ckpt", net, trainer, {"epoch": 1}, is_best=best_is_last)
    model = tmp_path / "model"
    artifacts.finalize_model_dir(model, None, best_params(last), last / "net.params", {})
    assert weight_in(model / artifacts.LAST_PARAMS) == 2.0
    assert weight_in(model / artifacts.BEST_PARAMS) == (2.0 if best_is_last else 1.0)
    assert os.path.samefile(model / artifacts.BEST_PARAMS, model / artifacts.LAST_PARAMS) == best_is_last
