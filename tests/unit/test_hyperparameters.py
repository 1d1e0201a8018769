import pytest

from gluonseg.docs import markdown_table, text_listing
from gluonseg.errors import ClientError
from gluonseg.hyperparameters import BY_NAME, SCHEMA, parse

REQUIRED = {"num_classes": "21", "num_training_samples": "1464"}


def test_schema_has_the_24_sagemaker_names_with_their_defaults():
    expected = {
        "backbone": "resnet-50",
        "use_pretrained_model": True,
        "algorithm": "fcn",
        "num_classes": None,
        "num_training_samples": None,
        "base_size": 520,
        "crop_size": 240,
        "early_stopping": False,
        "early_stopping_min_epochs": 5,
        "early_stopping_patience": 4,
        "early_stopping_tolerance": 0.0,
        "epochs": 10,
        "gamma1": 0.9,
        "gamma2": 0.9,
        "learning_rate": 0.001,
        "lr_scheduler": "poly",
        "lr_scheduler_factor": 0.1,
        "lr_scheduler_step": None,
        "mini_batch_size": 16,
        "momentum": 0.9,
        "optimizer": "sgd",
        "syncbn": False,
        "validation_mini_batch_size": 16,
        "weight_decay": 0.0001,
    }
    assert {p.name for p in SCHEMA if not p.extension} == set(expected)
    hp = parse(REQUIRED)
    for name, default in expected.items():
        if default is not None:
            assert hp[name] == default, name
    assert BY_NAME["num_classes"].required and BY_NAME["num_training_samples"].required


def test_strings_are_parsed_to_types_case_insensitive_booleans_and_quotes():
    hp = parse(
        {
            **REQUIRED,
            "use_pretrained_model": "false",
            "syncbn": "TRUE",
            "early_stopping": "True",
            "epochs": "30",
            "learning_rate": "1e-2",
            "backbone": '"resnet-101"',
            "algorithm": ' "psp" ',
        }
    )
    assert hp.use_pretrained_model is False and hp.syncbn is True and hp.early_stopping is True
    assert hp.epochs == 30 and isinstance(hp.epochs, int)
    assert hp.learning_rate == pytest.approx(0.01)
    assert hp.backbone == "resnet-101" and hp.algorithm == "psp"
    assert hp.num_classes == 21


def test_optimizer_message_is_sagemakers_wording():
    with pytest.raises(ClientError) as err:
        parse({**REQUIRED, "optimizer": "adadelta"})
    assert (
        "The value 'adadelta' is not valid for the 'optimizer' hyperparameter which accepts one of the "
        "following: 'sgd', 'adam', 'rmsprop', 'adagrad', 'nag'"
    ) in str(err.value)
    assert err.value.failure_text().startswith("ClientError: The value 'adadelta'")


@pytest.mark.parametrize(
    "name,value,accepts",
    [
        ("num_classes", "1", "an integer between 2 and 254"),
        ("num_classes", "255", "an integer between 2 and 254"),
        ("num_classes", "2.5", "an integer between 2 and 254"),
        ("num_training_samples", "0", "a positive integer"),
        ("base_size", "16", "an integer greater than 16"),
        ("crop_size", "8", "an integer greater than 16"),
        ("epochs", "0", "a positive integer"),
        ("learning_rate", "0", "a number greater than 0 and at most 1"),
        ("learning_rate", "1.5", "a number greater than 0 and at most 1"),
        ("weight_decay", "1", "a number greater than 0 and less than 1"),
        ("momentum", "0", "a number greater than 0 and at most 1"),
        ("gamma1", "-0.1", "a number between 0 and 1"),
        ("gamma2", "1.01", "a number between 0 and 1"),
        ("early_stopping_tolerance", "2", "a number between 0 and 1"),
        ("lr_scheduler_factor", "nan", "a number between 0 and 1"),
        ("mini_batch_size", "abc", "a positive integer"),
        ("validation_mini_batch_size", "0", "a positive integer"),
        ("early_stopping_patience", "0", "a positive integer"),
        ("early_stopping_min_epochs", "-1", "a non-negative integer"),
        ("use_pretrained_model", "yes", "one of the following: 'True', 'False'"),
        ("backbone", "resnet-152", "one of the following: 'resnet-50', 'resnet-101'"),
        ("algorithm", "unet", "one of the following: 'fcn', 'psp', 'deeplab'"),
        ("lr_scheduler", "linear", "one of the following: 'step', 'poly', 'cosine'"),
    ],
)
def test_each_range_is_enforced_and_the_message_says_the_range(name, value, accepts):
    # The settings under which the docs use each conditional hyperparameter (Param.used_when).
    used = {"lr_scheduler": "step", "lr_scheduler_step": "5", "optimizer": "rmsprop", "early_stopping": "True"}
    if name in ("momentum", "weight_decay"):
        used["optimizer"] = "sgd"
    with pytest.raises(ClientError) as err:
        parse({**REQUIRED, **used, name: value})
    assert f"The value '{value}' is not valid for the '{name}' hyperparameter which accepts {accepts}" in str(err.value)


def test_boundaries_that_are_valid():
    hp = parse(
        {
            "num_classes": "2",
            "num_training_samples": "1",
            "learning_rate": "1",
            "optimizer": "rmsprop",
            "early_stopping": "True",
            "gamma1": "0",
            "early_stopping_tolerance": "1",
            "crop_size": "17",
            "base_size": "17",
        }
    )
    assert hp.num_classes == 2 and hp.learning_rate == 1.0 and hp.gamma1 == 0.0
    assert parse({"num_classes": "254", "num_training_samples": "5"}).num_classes == 254


def test_crop_size_rounds_up_to_a_multiple_of_8_and_logs_it(caplog):
    with caplog.at_level("INFO"):
        assert parse({**REQUIRED, "crop_size": "250"}).crop_size == 256
    assert "crop_size 250 rounded up to 256" in caplog.text
    assert parse({**REQUIRED, "crop_size": "240"}).crop_size == 240


def test_required_names_are_reported():
    with pytest.raises(ClientError) as err:
        parse({})
    assert "'num_classes' is missing" in str(err.value)
    assert "'num_training_samples' is missing" in str(err.value)


def test_lr_scheduler_step_required_for_step_and_parsed_with_spaces():
    with pytest.raises(ClientError, match="'lr_scheduler_step' hyperparameter is required when 'lr_scheduler' is"):
        parse({**REQUIRED, "lr_scheduler": "step"})
    hp = parse({**REQUIRED, "lr_scheduler": "step", "lr_scheduler_step": "10, 20"})
    assert hp.lr_scheduler_step == (10, 20)
    for bad in ("10,x", "20, 10", "0, 5", "10,,20"):
        with pytest.raises(ClientError, match="'lr_scheduler_step' hyperparameter which accepts"):
            parse({**REQUIRED, "lr_scheduler": "step", "lr_scheduler_step": bad})


def test_unknown_keys_rejected_but_tuning_and_sagemaker_keys_tolerated():
    with pytest.raises(ClientError) as err:
        parse({**REQUIRED, "mini_batch_siz": "3"})
    assert "Additional properties are not allowed ('mini_batch_siz' was unexpected)" in str(err.value)
    with pytest.raises(ClientError, match=r"\('a', 'b' were unexpected\)"):
        parse({**REQUIRED, "a": "1", "b": "2"})
    hp = parse({**REQUIRED, "_tuning_objective_metric": "validation:mIOU", "sagemaker_region": '"us-east-1"'})
    assert "sagemaker_region" not in hp


def test_all_errors_in_one_run_are_reported_together():
    with pytest.raises(ClientError) as err:
        parse({"num_classes": "300", "optimizer": "adadelta", "mini_batch_siz": "1", "epochs": "-3"})
    text = str(err.value)
    for fragment in (
        "'num_classes'",
        "'optimizer'",
        "'mini_batch_siz' was unexpected",
        "'epochs'",
        "'num_training_samples' is missing",
    ):
        assert fragment in text


def test_generated_documentation_lists_every_name():
    table, listing = markdown_table(), text_listing()
    for p in SCHEMA:
        assert f"`{p.name}`" in table
        assert p.name in listing
    assert "an integer between 2 and 254" in table


def _ignored_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if " is ignored: " in r.getMessage()]


def test_values_the_docs_ignore_are_ignored_with_one_log_line_each(caplog):
    """AWS: lr_scheduler_step "Conditionally Required if lr_scheduler is set to step. Otherwise, ignored."
    A tuning job's static hyperparameters often keep such leftovers; they must not fail the job."""
    leftovers = {
        "lr_scheduler": "poly",
        "lr_scheduler_step": "abc",
        "lr_scheduler_factor": "7",
        "optimizer": "adam",
        "momentum": "0",
        "weight_decay": "1.5",
        "gamma1": "-1",
        "early_stopping": "False",
        "early_stopping_tolerance": "2",
        "early_stopping_patience": "0",
        "early_stopping_min_epochs": "-4",
    }
    with caplog.at_level("INFO", logger="gluonseg.hyperparameters"):
        hp = parse({**REQUIRED, **leftovers})
    lines = _ignored_lines(caplog)
    assert len(lines) == 8  # one per ignored value
    assert (
        "lr_scheduler_step='abc' is ignored: it is used only when lr_scheduler is 'step' (this job: lr_scheduler=poly)"
        in lines
    )
    assert "lr_scheduler_factor='7' is ignored: it is used only when lr_scheduler is 'step'" in "\n".join(lines)
    assert (
        "momentum='0' is ignored: it is used only when optimizer is 'sgd' or 'nag' (this job: optimizer=adam)" in lines
    )
    assert "weight_decay='1.5' is ignored: it is used only when optimizer is 'sgd' or 'nag'" in "\n".join(lines)
    assert "gamma1='-1' is ignored: it is used only when optimizer is 'rmsprop'" in "\n".join(lines)
    for name in ("early_stopping_tolerance", "early_stopping_patience", "early_stopping_min_epochs"):
        assert any(
            line.startswith(f"{name}=")
            and "used only when early_stopping is True (this job: early_stopping=False)" in line
            for line in lines
        ), name
    # An invalid ignored value is replaced by the default, so nothing downstream ever sees it.
    for name in leftovers:
        if name not in ("lr_scheduler", "optimizer", "early_stopping"):
            assert hp[name] == BY_NAME[name].default, name


def test_ignored_but_valid_values_are_kept_and_logged(caplog):
    with caplog.at_level("INFO", logger="gluonseg.hyperparameters"):
        hp = parse({**REQUIRED, "optimizer": "adagrad", "momentum": "0.95", "lr_scheduler_step": "3, 6"})
    assert hp.momentum == 0.95 and hp.lr_scheduler_step == (3, 6)
    assert "momentum='0.95' is ignored: it is used only when optimizer is 'sgd' or 'nag'" in caplog.text
    assert "lr_scheduler_step='3, 6' is ignored" in caplog.text


def test_values_are_validated_when_the_docs_use_them_or_give_a_range_without_condition():
    # Used: the same values fail.
    for extra in (
        {"lr_scheduler": "step", "lr_scheduler_step": "abc"},
        {"lr_scheduler": "step", "lr_scheduler_step": "5", "lr_scheduler_factor": "7"},
        {"optimizer": "nag", "momentum": "0"},
        {"optimizer": "sgd", "weight_decay": "1.5"},
        {"optimizer": "rmsprop", "gamma1": "-1"},
        {"early_stopping": "True", "early_stopping_patience": "0"},
    ):
        name = [k for k in extra if k not in ("lr_scheduler", "optimizer", "early_stopping")][-1]
        with pytest.raises(ClientError, match=f"is not valid for the '{name}' hyperparameter"):
            parse({**REQUIRED, **extra})
    # gamma2: "The momentum factor for rmsprop", with a range and no condition: validated with any optimizer.
    with pytest.raises(ClientError, match="'gamma2' hyperparameter"):
        parse({**REQUIRED, "optimizer": "sgd", "gamma2": "3"})
    # The early-stopping integers: the docs' type ("integer") holds without a condition.
    with pytest.raises(ClientError, match="'early_stopping_patience' hyperparameter"):
        parse({**REQUIRED, "early_stopping": "False", "early_stopping_patience": "abc"})
    # An invalid condition leaves its dependents checked as usual: every problem is reported.
    with pytest.raises(ClientError) as err:
        parse({**REQUIRED, "optimizer": "adadelta", "momentum": "7"})
    assert "'momentum'" in str(err.value) and "'optimizer'" in str(err.value)


def test_each_decision_is_written_next_to_its_source_sentence():
    conditional = {p.name: p.used_when for p in SCHEMA if p.used_when is not None}
    assert set(conditional) == {
        "early_stopping_min_epochs",
        "early_stopping_patience",
        "early_stopping_tolerance",
        "gamma1",
        "lr_scheduler_factor",
        "lr_scheduler_step",
        "momentum",
        "weight_decay",
    }
    assert "Otherwise, ignored." in conditional["lr_scheduler_step"].source
    assert "ignores this parameter" in conditional["momentum"].source
    assert "used only when early_stopping = True" in conditional["early_stopping_tolerance"].source
    for cond in conditional.values():
        assert cond.on in BY_NAME and cond.decision and cond.still_checked in ("nothing", "type")
    assert "Ignored unless lr_scheduler is 'step'." in markdown_table()
    assert "Ignored unless optimizer is 'sgd' or 'nag'." in text_listing()


def test_a_saved_model_file_is_read_without_ignored_value_lines(caplog):
    with caplog.at_level("INFO", logger="gluonseg.hyperparameters"):
        parse({**REQUIRED, "optimizer": "adam", "momentum": "0.9"}, log_ignored=False)
    assert not _ignored_lines(caplog)


# -- gluonseg extensions: class_weights and loss


def test_extensions_are_marked_default_to_the_built_in_and_parse():
    assert {p.name for p in SCHEMA if p.extension} == {"class_weights", "loss", "int8_model", "tensorboard"}
    hp = parse(REQUIRED)
    assert hp.class_weights == "none" and hp.loss == "cross_entropy" and hp.int8_model is True
    assert parse({**REQUIRED, "int8_model": "False"}).int8_model is False and hp.tensorboard is True
    for value in ("inverse_frequency", '"median_frequency"'):
        assert parse({**REQUIRED, "class_weights": value}).class_weights == value.strip('"')
    hp = parse({"num_classes": "3", "num_training_samples": "5", "class_weights": " 0.5, 2,0 ", "loss": "ohem"})
    assert hp.class_weights == (0.5, 2.0, 0.0) and hp.loss == "ohem"


@pytest.mark.parametrize("value", ["median", "1,2,x", "1,-2,3", "0,0,0", "1,nan,2", "1,inf,2", "1,,2"])
def test_invalid_class_weights_use_the_schema_wording(value):
    with pytest.raises(ClientError) as err:
        parse({"num_classes": "3", "num_training_samples": "5", "class_weights": value})
    assert (
        f"The value '{value}' is not valid for the 'class_weights' hyperparameter which accepts one of 'none', "
        "'inverse_frequency', 'median_frequency', or a comma-separated list of num_classes non-negative numbers, "
        "not all 0"
    ) in str(err.value)
    assert err.value.failure_text().startswith("ClientError: The value")


def test_a_weight_list_of_the_wrong_length_names_both_counts():
    with pytest.raises(ClientError) as err:
        parse({"num_classes": "3", "num_training_samples": "5", "class_weights": "1,2"})
    assert "'class_weights' hyperparameter: it lists 2 weight(s) but num_classes is 3" in str(err.value)
    assert BY_NAME["class_weights"].accepts() in str(err.value)


def test_invalid_loss_uses_the_schema_wording():
    with pytest.raises(ClientError) as err:
        parse({**REQUIRED, "loss": "focal"})
    assert (
        "The value 'focal' is not valid for the 'loss' hyperparameter which accepts one of the following: "
        "'cross_entropy', 'ohem'"
    ) in str(err.value)


def test_extensions_are_listed_apart_and_left_out_of_the_model_folder_at_their_default():
    from gluonseg.hyperparameters import typed_for_json

    table, listing = markdown_table(), text_listing()
    sagemaker, extensions = table.split("**gluonseg extensions**")
    assert "`class_weights`" in extensions and "`loss`" in extensions and "`class_weights`" not in sagemaker
    assert listing.index("gluonseg extensions (not in SageMaker's algorithm") > listing.index("weight_decay")
    assert "class_weights" not in typed_for_json(parse(REQUIRED))
    assert "loss" not in typed_for_json(parse({**REQUIRED, "loss": "cross_entropy", "class_weights": "none"}))
    assert "int8_model" not in typed_for_json(parse({**REQUIRED, "int8_model": "True"}))
    assert typed_for_json(parse({**REQUIRED, "int8_model": "False"}))["int8_model"] is False
    written = typed_for_json(parse({"num_classes": "2", "num_training_samples": "1", "class_weights": "1,3"}))
    assert written["class_weights"] == [1.0, 3.0]
