"""The INT8 step after training: a faithful INT8 model written into the model folder (gluonseg.inference.int8_onnx).

Run by the training entry (gluonseg.train_entry) once the model folder is written, on the first host only,
in File mode, unless `int8_model=False`. The check pictures are the ones training kept in the folder
(gluonseg.data.check_set); the calibration pictures are others, chosen by the same plan. A finished
training job never fails here: the step's errors are logged and the FP32 model is served as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from gluonseg.data.channels import Sample
from gluonseg.data.check_set import CheckPicture, PicturePlan, plan_pictures, read_check_set
from gluonseg.data.images import load_image
from gluonseg.data.inputs import TrainingInputs
from gluonseg.environment import Environment
from gluonseg.errors import error_summary
from gluonseg.hyperparameters import Hyperparameters

log = logging.getLogger("gluonseg.train")


def make_int8_after_training(env: Environment, hp: Hyperparameters, inputs: TrainingInputs, primary: bool) -> None:
    if not hp.int8_model:
        log.info("INT8 model: not made (int8_model=False)")
        return
    if not primary:
        return
    if inputs.mode != "file":
        log.info("INT8 model: not made in Pipe mode (no pictures kept to calibrate and check it on)")
        return
    start = time.perf_counter()
    try:
        if not make_int8_model(env.model_dir, inputs.validation_samples, inputs.train_samples):
            return  # nothing was made: the warning says why
    except Exception as exc:  # noqa: BLE001 - the trained FP32 model is already written and stays served
        log.warning("INT8 model: not made (%s)", error_summary(exc))
    log.info("INT8 step took %.1f s", time.perf_counter() - start)


def make_int8_model(model_dir: Path, validation: Sequence[Sample], train: Sequence[Sample]) -> bool:
    """The INT8 model of a written model folder, calibrated on the job's plan over its channels' samples and
    checked on the pictures training kept; False (and a warning) when there are too few pictures for both."""
    check = read_check_set(model_dir)
    plan = plan_pictures(validation, train)
    if not check or not plan.calibration:
        log.warning("INT8 model: not made (too few pictures to calibrate it and check it on others)")
        return False
    if plan.note:
        log.info("INT8 model: %s", plan.note)
    from gluonseg.inference.int8_onnx import make_int8_onnx  # onnx and its quantizer: only when a model is made

    sources = {"calibration": plan.calibration_source, "check": plan.check_source}
    if plan.note:
        sources["note"] = plan.note
    make_int8_onnx(model_dir, calibration_pictures(plan), check, sources)
    return True


def calibration_pictures(plan: PicturePlan) -> list[CheckPicture]:
    """The plan's calibration pictures as the step calibrates on them (RGB, EXIF orientation not applied)."""
    return [
        CheckPicture(s.image_file, load_image(s.image_path, s.image_file, apply_exif=False), None)
        for s in plan.calibration
    ]
