"""A tampered checkpoint cannot run code: the optimizer-state pickle is checked before MXNet loads it."""

import os
import pickle

import mxnet as mx
import pytest

from gluonseg.errors import ClientError
from gluonseg.training.checkpoint import check_optimizer_state, pickle_globals, save_checkpoint
from gluonseg.training.schedule import PolySchedule


class Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def real_states(tmp_path, optimizer="adam"):
    p = mx.gluon.Parameter("w", shape=(3,))
    p.initialize(ctx=mx.cpu())
    trainer = mx.gluon.Trainer([p], optimizer, {"learning_rate": 0.1, "lr_scheduler": PolySchedule(0.1, 10)})
    with mx.autograd.record():
        loss = (p.data() * 2).sum()
    loss.backward()
    trainer.step(1)
    net = mx.gluon.nn.Dense(2, in_units=3)
    net.initialize()
    return save_checkpoint(tmp_path / "ckpt", net, trainer, {"epoch": 0}) / "trainer.states"


@pytest.mark.parametrize("optimizer", ["sgd", "nag", "adam", "rmsprop", "adagrad"])
def test_real_checkpoints_of_every_optimizer_pass(tmp_path, optimizer):
    check_optimizer_state(real_states(tmp_path, optimizer))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    path = tmp_path / "trainer.states"
    path.write_bytes(pickle.dumps(({0: Boom()}, "x"), protocol=2))
    assert ("posix", "system") in pickle_globals(path.read_bytes())
    with pytest.raises(ClientError, match="refers to posix.system.*refusing to load"):
        check_optimizer_state(path)
    for protocol in (0, 4, 5):
        path.write_bytes(pickle.dumps([Boom()], protocol=protocol))
        with pytest.raises(ClientError, match="posix.system"):
            check_optimizer_state(path)


def test_garbage_is_refused(tmp_path):
    path = tmp_path / "trainer.states"
    path.write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(ClientError, match="unreadable"):
        check_optimizer_state(path)
