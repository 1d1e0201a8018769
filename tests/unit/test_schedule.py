"""LR schedules: values by independent arithmetic, the factory, and use inside a real gluon.Trainer."""

from __future__ import annotations

import math
import pickle

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from gluonseg import hyperparameters
from gluonseg.errors import ClientError
from gluonseg.training.schedule import (
    CosineSchedule,
    PolySchedule,
    StepSchedule,
    iterations_per_epoch,
    make_lr_scheduler,
)


def hp(**overrides):
    raw = {
        "num_classes": "3",
        "num_training_samples": "10",
        "mini_batch_size": "4",
        "epochs": "2",
        "learning_rate": "0.1",
    }
    raw.update(overrides)
    return hyperparameters.parse(raw)


def test_iterations_per_epoch_rounds_up():
    assert iterations_per_epoch(10, 4) == 3
    assert iterations_per_epoch(8, 4) == 2
    assert iterations_per_epoch(1, 16) == 1
    with pytest.raises(ValueError):
        iterations_per_epoch(0, 4)


def test_poly_values():
    # 10 samples, batch 4 -> 3 iterations/epoch; 2 epochs -> T = 6. Update k runs at t = k - 1.
    sched = make_lr_scheduler(hp(lr_scheduler="poly"))
    assert isinstance(sched, PolySchedule)
    assert sched.total_iterations == 6
    assert sched(1) == pytest.approx(0.1)
    assert sched(2) == pytest.approx(0.1 * (5 / 6) ** 0.9)
    assert sched(4) == pytest.approx(0.1 * 0.5**0.9)
    assert sched(6) == pytest.approx(0.1 * (1 / 6) ** 0.9)
    assert sched(7) == 0.0  # t = 6 = T
    assert sched(100) == 0.0  # clamped to T, never negative or complex
    assert sched(0) == pytest.approx(0.1)  # before any update (trainer.learning_rate at start)


def test_cosine_values():
    sched = make_lr_scheduler(hp(lr_scheduler="cosine", epochs="4", learning_rate="0.2"))  # T = 12
    assert isinstance(sched, CosineSchedule)
    assert sched(1) == pytest.approx(0.2)
    assert sched(4) == pytest.approx(0.2 * (1 + math.cos(math.pi * 3 / 12)) / 2)
    assert sched(7) == pytest.approx(0.1)  # t = 6 = T/2
    assert sched(13) == pytest.approx(0.0, abs=1e-15)
    assert sched(50) == pytest.approx(0.0, abs=1e-15)


def test_step_values():
    # 3 iterations/epoch, 5 epochs, factor 0.5 after epochs 1 and 3: boundaries at t = 3 and t = 9.
    sched = make_lr_scheduler(hp(lr_scheduler="step", epochs="5", lr_scheduler_step="1, 3", lr_scheduler_factor="0.5"))
    assert isinstance(sched, StepSchedule)
    expected = {
        1: 0.1,
        3: 0.1,  # epoch 1: updates 1..3 (t 0..2)
        4: 0.05,
        9: 0.05,  # epochs 2-3: updates 4..9 (t 3..8)
        10: 0.025,
        15: 0.025,
        40: 0.025,
    }
    for num_update, lr in expected.items():
        assert sched(num_update) == pytest.approx(lr), num_update


def test_explicit_iters_per_epoch_overrides_samples():
    sched = make_lr_scheduler(hp(lr_scheduler="step", lr_scheduler_step="1"), iters_per_epoch=5)
    assert sched.total_iterations == 10
    assert sched(5) == pytest.approx(0.1)
    assert sched(6) == pytest.approx(0.1 * 0.1)  # default factor 0.1


def test_schedule_is_pure_function_of_num_update_and_picklable():
    sched = make_lr_scheduler(hp(lr_scheduler="step", epochs="5", lr_scheduler_step="1, 3"))
    forward = [sched(k) for k in range(1, 20)]
    backward = [sched(k) for k in reversed(range(1, 20))][::-1]
    assert forward == backward  # jumping back (resume from a checkpoint) gives the same values
    clone = pickle.loads(pickle.dumps(sched))
    assert [clone(k) for k in range(1, 20)] == forward


def test_step_without_steps_is_client_error():
    params = hp().replace(lr_scheduler="step", lr_scheduler_step=None)
    with pytest.raises(ClientError, match="lr_scheduler_step"):
        make_lr_scheduler(params)


def test_unknown_scheduler_is_client_error():
    with pytest.raises(ClientError, match="lr_scheduler"):
        make_lr_scheduler(hp().replace(lr_scheduler="linear"))


@pytest.mark.parametrize("name", ["poly", "cosine", "step"])
def test_gluon_trainer_uses_the_schedule(name):
    params = hp(lr_scheduler=name, epochs="3", lr_scheduler_step="1, 2", lr_scheduler_factor="0.5")
    sched = make_lr_scheduler(params)  # T = 9
    expected = [sched(k) for k in range(1, 12)]
    # Plain SGD without momentum or weight decay: each step moves w by exactly -lr * grad.
    net = gluon.nn.Dense(1, use_bias=False, in_units=1)
    net.initialize(mx.init.Zero())
    trainer = gluon.Trainer(
        net.collect_params(),
        "sgd",
        {"learning_rate": params.learning_rate, "lr_scheduler": sched, "wd": 0.0, "momentum": 0.0},
    )
    x = mx.nd.array([[1.0]])
    weight = net.weight
    for k, lr in enumerate(expected, start=1):
        before = weight.data().asnumpy().copy()
        with autograd.record():
            loss = net(x).sum()  # d loss / d w = 1
        loss.backward()
        trainer.step(1)
        moved = before - weight.data().asnumpy()
        np.testing.assert_allclose(moved, [[lr]], rtol=1e-5, atol=1e-9, err_msg=f"step {k}")
        assert trainer.learning_rate == pytest.approx(lr)
    # By hand for the schedule the trainer ran: 3 iterations/epoch, 9 in all.
    hand = {
        "poly": [0.1 * (1 - t / 9) ** 0.9 for t in range(9)] + [0.0, 0.0],
        "cosine": [0.1 * (1 + math.cos(math.pi * t / 9)) / 2 for t in range(9)] + [0.0, 0.0],
        "step": [0.1] * 3 + [0.05] * 3 + [0.025] * 5,
    }[name]
    np.testing.assert_allclose(expected, hand, atol=1e-12)
