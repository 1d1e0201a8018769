import json
import subprocess
import sys
from pathlib import Path

from gluonseg.docs import current_block, generated_block
from gluonseg.hyperparameters import SCHEMA

REPO = Path(__file__).resolve().parents[2]
GLUONSEG = str(Path(sys.executable).parent / "gluonseg")


def test_readme_hyperparameter_table_is_generated_from_the_schema():
    readme = (REPO / "README.md").read_text()
    assert current_block(readme) == generated_block(), "run: python -m gluonseg.docs"


def test_ci_runs_the_readme_test_command():
    assert "make test" in (REPO / ".ci" / "run").read_text()
    assert "make test" in (REPO / "README.md").read_text()


def test_cli_hyperparameters_listing():
    out = subprocess.run([GLUONSEG, "hyperparameters"], capture_output=True, text=True, check=True).stdout
    for p in SCHEMA:
        assert p.name in out
    md = subprocess.run([GLUONSEG, "hyperparameters", "--markdown"], capture_output=True, text=True, check=True).stdout
    assert md.strip() in (REPO / "README.md").read_text()


def test_cli_make_dataset_then_train_rejects_bad_overrides(tmp_path):
    data = tmp_path / "data"
    subprocess.run(
        [
            GLUONSEG,
            "make-dataset",
            "--out",
            str(data),
            "--classes",
            "3",
            "--train",
            "4",
            "--validation",
            "2",
            "--size",
            "48",
        ],
        check=True,
        capture_output=True,
    )
    assert len(list((data / "train").glob("*.jpg"))) == 4
    proc = subprocess.run(
        [
            GLUONSEG,
            "train",
            "--data",
            str(data),
            "--model-dir",
            str(tmp_path / "m"),
            "num_classes=3",
            "num_training_samples=4",
            "optimizer=adadelta",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "The value 'adadelta' is not valid for the 'optimizer' hyperparameter" in proc.stderr
    failure = (tmp_path / "m" / "output" / "failure").read_text()
    assert failure.startswith("ClientError:")
    hp_file = tmp_path / "hp.json"
    hp_file.write_text(json.dumps({"num_classes": 3, "num_training_samples": 4}))
    proc = subprocess.run(
        [
            GLUONSEG,
            "train",
            "--data",
            str(data),
            "--model-dir",
            str(tmp_path / "m2"),
            "--hyperparameters",
            str(hp_file),
            "crop_size=abc",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "'crop_size' hyperparameter" in proc.stderr


def test_readme_plain_mxnet_snippet_runs_on_a_trained_model(trained_model_dir):
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- plain-mxnet:start -->")[1].split("<!-- plain-mxnet:end -->")[0]
    code = block.split("```python")[1].split("```")[0]
    namespace = {"MODEL_DIR": str(trained_model_dir)}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own snippet, run as a user would
    mask = namespace["mask"]
    crop = json.loads((trained_model_dir / "hyperparams.json").read_text())["_gluonseg"]["crop_size"]
    assert mask.shape == (crop, crop) and mask.max() < 4


def test_every_cli_command_in_the_readme_has_help():
    readme = (REPO / "README.md").read_text()
    commands = sorted({line.split()[1] for line in readme.splitlines() if line.startswith("gluonseg ")})
    assert {
        "make-dataset",
        "prepare-voc",
        "hyperparameters",
        "algorithm-spec",
        "train",
        "evaluate",
        "predict",
        "serve",
        "transform",
    } <= set(commands)
    for command in commands:
        proc = subprocess.run([GLUONSEG, command, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and "usage: gluonseg " + command in proc.stdout


def test_cli_train_with_two_simulated_hosts_writes_one_model(tmp_path, generated_dataset):
    model = tmp_path / "m"
    proc = subprocess.run(
        [
            GLUONSEG,
            "train",
            "--hosts",
            "2",
            "--data",
            str(generated_dataset),
            "--model-dir",
            str(model),
            "num_classes=4",
            "num_training_samples=8",
            "use_pretrained_model=False",
            "crop_size=64",
            "base_size=72",
            "epochs=1",
            "mini_batch_size=4",
            "validation_mini_batch_size=2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "algo-1: ok" in proc.stdout and "algo-2: ok" in proc.stdout
    assert (model / "model_best.params").exists() and (model / "model-symbol.json").exists()
    assert not (model / ".hosts" / "algo-2" / "model").exists()
