import pytest

from gluonseg.errors import ClientError
from gluonseg.hyperparameters import BY_NAME, SCHEMA, markdown_table, parse, text_listing

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
    with pytest.raises(ClientError) as err:
        parse({**REQUIRED, name: value})
    assert f"The value '{value}' is not valid for the '{name}' hyperparameter which accepts {accepts}" in str(err.value)


def test_boundaries_that_are_valid():
    hp = parse(
        {
            "num_classes": "2",
            "num_training_samples": "1",
            "learning_rate": "1",
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


# -- gluonseg extensions: class_weights and loss


def test_extensions_are_marked_default_to_the_built_in_and_parse():
    assert {p.name for p in SCHEMA if p.extension} == {"class_weights", "loss"}
    hp = parse(REQUIRED)
    assert hp.class_weights == "none" and hp.loss == "cross_entropy"
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
    written = typed_for_json(parse({"num_classes": "2", "num_training_samples": "1", "class_weights": "1,3"}))
    assert written["class_weights"] == [1.0, 3.0]
