"""EarlyStopping: each rule on a sequence of per-epoch mIOU values."""

from __future__ import annotations

import json
import math

import pytest

from gluonseg import hyperparameters
from gluonseg.training.early_stopping import EarlyStopping


def run(stopper: EarlyStopping, scores: list[float]) -> int | None:
    """Feed scores for epochs 0, 1, ...; return the 0-based epoch at which it said stop, or None."""
    for epoch, score in enumerate(scores):
        if stopper.update(epoch, score):
            return epoch
    return None


def test_stops_after_patience_not_improved_epochs():
    es = EarlyStopping(enabled=True, min_epochs=0, patience=2, tolerance=0.0)
    # epoch 0 best, 1 improves, 2 and 3 do not -> stop after epoch 3.
    assert run(es, [0.3, 0.4, 0.39, 0.35, 0.9]) == 3
    assert es.best_score == 0.4 and es.best_epoch == 1
    assert es.stopped


def test_improvement_resets_the_count():
    es = EarlyStopping(enabled=True, min_epochs=0, patience=2, tolerance=0.0)
    assert run(es, [0.3, 0.2, 0.31, 0.2, 0.32, 0.1]) is None
    assert es.bad_epochs == 1
    assert es.best_epoch == 4


def test_equal_score_is_not_an_improvement():
    es = EarlyStopping(enabled=True, min_epochs=0, patience=3, tolerance=0.0)
    assert run(es, [0.5, 0.5, 0.5, 0.5]) == 3
    assert es.best_epoch == 0  # the first epoch with the best score stays the best


def test_min_epochs_delays_the_stop():
    # Patience is exhausted after epoch 2 (3 epochs completed), but 5 epochs must complete first.
    es = EarlyStopping(enabled=True, min_epochs=5, patience=2, tolerance=0.0)
    assert run(es, [0.5, 0.4, 0.4, 0.4, 0.4, 0.4]) == 4  # epoch index 4 = 5th completed epoch
    es = EarlyStopping(enabled=True, min_epochs=3, patience=2, tolerance=0.0)
    assert run(es, [0.5, 0.4, 0.4, 0.4]) == 2  # 3 epochs completed and 2 not improved


def test_relative_tolerance():
    # best 0.5; tolerance 0.1 needs >= 0.55 to count. 0.54 (gain 8%) is not improved but becomes the best,
    # so 0.58 is then measured against 0.54 (gain ~7.4%): not improved either.
    es = EarlyStopping(enabled=True, min_epochs=0, patience=2, tolerance=0.1)
    assert es.update(0, 0.5) is False
    assert es.update(1, 0.54) is False
    assert es.bad_epochs == 1 and es.best_score == 0.54 and es.best_epoch == 1 and es.is_best
    assert es.update(2, 0.58) is True
    assert es.best_score == 0.58 and es.best_epoch == 2


def test_relative_gain_at_tolerance_counts_as_improved():
    es = EarlyStopping(enabled=True, min_epochs=0, patience=1, tolerance=0.25)
    assert es.update(0, 0.5) is False
    assert es.update(1, 0.625) is False  # exactly 25 % better: not below the tolerance
    assert es.bad_epochs == 0
    assert es.update(2, 0.78) is True  # 24.8 % better than 0.625


def test_best_zero_then_any_positive_improves():
    es = EarlyStopping(enabled=True, min_epochs=0, patience=1, tolerance=0.5)
    assert es.update(0, 0.0) is False
    assert es.best_score == 0.0
    assert es.update(1, 0.001) is False  # unbounded relative gain
    assert es.best_epoch == 1
    es2 = EarlyStopping(enabled=True, min_epochs=0, patience=1, tolerance=0.0)
    es2.update(0, 0.0)
    assert es2.update(1, 0.0) is True


def test_nan_is_not_improved_and_never_best():
    es = EarlyStopping(enabled=True, min_epochs=0, patience=2, tolerance=0.0)
    assert es.update(0, float("nan")) is False
    assert es.best_score is None and es.best_epoch is None and not es.is_best
    assert es.update(1, 0.2) is False
    assert es.best_epoch == 1 and es.bad_epochs == 0
    es.update(2, float("nan"))
    assert es.update(3, float("nan")) is True


def test_disabled_never_stops_but_tracks_best():
    es = EarlyStopping(enabled=False, min_epochs=0, patience=1, tolerance=0.0)
    assert run(es, [0.2, 0.6, 0.1, 0.1, 0.1, 0.5]) is None
    assert es.best_score == 0.6 and es.best_epoch == 1
    assert not es.stopped


def test_is_best_flags_each_new_maximum():
    es = EarlyStopping(enabled=False, min_epochs=0, patience=1, tolerance=0.0)
    flags = []
    for epoch, score in enumerate([0.1, 0.3, 0.2, 0.3, 0.4]):
        es.update(epoch, score)
        flags.append(es.is_best)
    assert flags == [True, True, False, False, True]


def test_epochs_must_increase():
    es = EarlyStopping(enabled=True, min_epochs=0, patience=1, tolerance=0.0)
    es.update(2, 0.1)
    with pytest.raises(ValueError):
        es.update(2, 0.2)
    with pytest.raises(ValueError):
        EarlyStopping(True, 0, 1, 0.0).update(-1, 0.2)


def test_invalid_configuration():
    with pytest.raises(ValueError):
        EarlyStopping(True, 0, 0, 0.0)
    with pytest.raises(ValueError):
        EarlyStopping(True, -1, 1, 0.0)
    with pytest.raises(ValueError):
        EarlyStopping(True, 0, 1, 1.5)


def test_state_round_trip_resumes_identically():
    scores = [0.3, 0.4, 0.38, 0.41, 0.40, 0.39, 0.37, 0.36]
    straight = EarlyStopping(enabled=True, min_epochs=2, patience=3, tolerance=0.05)
    expected = run(straight, scores)
    # epoch 2 (0.38) misses; epoch 3 (0.41) is only 2.5 % over 0.4 (misses, becomes best); epoch 4 misses: 3 in a row.
    assert expected == 4
    first = EarlyStopping(enabled=True, min_epochs=2, patience=3, tolerance=0.05)
    for epoch in range(3):
        assert not first.update(epoch, scores[epoch])
    state = json.loads(json.dumps(first.state_dict()))
    resumed = EarlyStopping(enabled=True, min_epochs=2, patience=3, tolerance=0.05)
    resumed.load_state_dict(state)
    stop_at = None
    for epoch in range(3, len(scores)):
        if resumed.update(epoch, scores[epoch]):
            stop_at = epoch
            break
    assert stop_at == expected
    assert resumed.state_dict() == straight.state_dict()


def test_from_hyperparameters():
    hp = hyperparameters.parse(
        {
            "num_classes": "2",
            "num_training_samples": "4",
            "early_stopping": "True",
            "early_stopping_min_epochs": "3",
            "early_stopping_patience": "2",
            "early_stopping_tolerance": "0.01",
        }
    )
    es = EarlyStopping.from_hyperparameters(hp)
    assert (es.enabled, es.min_epochs, es.patience, es.tolerance) == (True, 3, 2, 0.01)
    defaults = EarlyStopping.from_hyperparameters(
        hyperparameters.parse({"num_classes": "2", "num_training_samples": "4"})
    )
    assert (defaults.enabled, defaults.min_epochs, defaults.patience, defaults.tolerance) == (False, 5, 4, 0.0)
    assert math.isclose(defaults.tolerance, 0.0)
