import logging

import mxnet as mx
import pytest

from gluonseg.data.inputs import resolve_inputs
from gluonseg.environment import Environment
from gluonseg.errors import ClientError
from gluonseg.hyperparameters import parse
from gluonseg.training.setup import optimizer_settings, seed_from_env
from tests.support.helpers import make_channels

BASE = {"num_classes": "3", "num_training_samples": "3"}


@pytest.mark.parametrize(
    "name,expected",
    [
        ("sgd", {"momentum": 0.8, "wd": 0.001}),
        ("nag", {"momentum": 0.8, "wd": 0.001}),
        ("rmsprop", {"gamma1": 0.7, "gamma2": 0.6, "centered": True}),
        ("adam", {}),
        ("adagrad", {}),
    ],
)
def test_each_optimizer_gets_the_hyperparameters_the_docs_assign_it(name, expected):
    hp = parse(
        {**BASE, "optimizer": name, "momentum": "0.8", "weight_decay": "0.001", "gamma1": "0.7", "gamma2": "0.6"}
    )
    opt, args = optimizer_settings(hp)
    assert opt == name and args == expected
    # MXNet accepts exactly these arguments and keeps them.
    p = mx.gluon.Parameter("w", shape=(2,))
    p.initialize(ctx=mx.cpu())
    trainer = mx.gluon.Trainer([p], opt, {"learning_rate": 0.1, **args})
    for key, value in args.items():
        attr = {"wd": "wd"}.get(key, key)
        assert getattr(trainer._optimizer, attr) == value


def test_num_training_samples_mismatch_warns_and_uses_the_real_count(tmp_path, caplog):
    make_channels(tmp_path / "input" / "data", n_train=3, n_val=2)
    hp = parse({"num_classes": "3", "num_training_samples": "1464"})
    with caplog.at_level(logging.WARNING):
        inputs = resolve_inputs(Environment(tmp_path), hp)
    assert inputs.num_training_samples == 3
    assert "num_training_samples=1464 but the train channel holds 3 images; using 3" in caplog.text


def test_seed_from_env(monkeypatch):
    monkeypatch.delenv("GLUONSEG_SEED", raising=False)
    assert seed_from_env() is None
    monkeypatch.setenv("GLUONSEG_SEED", "42")
    assert seed_from_env() == 42
    monkeypatch.setenv("GLUONSEG_SEED", "x")
    with pytest.raises(ClientError, match="GLUONSEG_SEED must be an integer"):
        seed_from_env()


def test_single_host_collective_passes_everything_through(tmp_path):
    from gluonseg.environment import ResourceConfig
    from gluonseg.training.distributed.collectives import AgreedStop
    from gluonseg.training.distributed.single_host import SingleHost, connect
    from gluonseg.training.stopping import StopRequest

    one = connect(ResourceConfig(current_host="algo-1", hosts=("algo-1",)), 0)
    assert isinstance(one, SingleHost) and one.is_primary and one.num_workers == 1
    assert one.agree_iterations(10, 4) == 3
    batches = [1, 2]
    assert one.lockstep(batches, 5, StopRequest()) is batches
    assert one.finish_epoch(None, None, None, 0, 0.25) == 0.25
    assert one.sum_confusion("cm") == "cm"
    assert one.resume(tmp_path, None, None, None) == (None, None)
    assert one.trainer_kvstore([1]) == {"kvstore": None, "update_on_kvstore": None}
    assert one.trainer_kvstore([1, 2])["kvstore"] == "device"
    assert type(one.stop_request()) is StopRequest and isinstance(AgreedStop(), StopRequest)
