"""JSON inputs are bounded in size and depth, nothing is unpickled or evaluated, Flask debug is off,
and no secret of the environment or file content leaks into an error.

Covered inputs: hyperparameters.json, inputdataconfig.json, resourceconfig.json (gluonseg.environment)
and the label-map channel (gluonseg.data.label_map), all read through `read_json_file`.
"""

from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gluonseg.data.label_map import MAX_LABEL_MAP_BYTES, load_label_map
from gluonseg.environment import MAX_CONFIG_BYTES, MAX_JSON_DEPTH, Environment, read_json_file
from gluonseg.errors import ClientError

REPO = Path(__file__).resolve().parents[2]
SECRET = "gluonseg-test-secret-Vb81q0"  # stands for AWS_SECRET_ACCESS_KEY and the like
CONTENT_MARK = "content-only-marker-5d2e"  # written into files; must not come back in a message


def nested(depth: int, leaf=1) -> object:
    """`depth` levels of alternating objects and arrays around `leaf` (depth 1 = one object)."""
    value = leaf
    for level in range(depth):
        value = {"k": value} if level % 2 else [value]
    return value


def config_readers(env: Environment) -> dict:
    """file name -> (path, the call that reads it, its description in messages)."""
    return {
        "hyperparameters.json": (env.hyperparameters_path, env.raw_hyperparameters, "hyperparameters file"),
        "inputdataconfig.json": (env.input_data_config_path, env.channels, "input data config"),
        "resourceconfig.json": (env.resource_config_path, env.resources, "resource config"),
    }


@pytest.fixture()
def env(tmp_path, monkeypatch) -> Environment:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    environment = Environment(tmp_path)
    environment.config_dir.mkdir(parents=True)
    return environment


def assert_clean(message: str) -> None:
    assert SECRET not in message and CONTENT_MARK not in message and "Traceback" not in message


@pytest.mark.parametrize("name", ["hyperparameters.json", "inputdataconfig.json", "resourceconfig.json"])
def test_config_file_over_the_size_limit_names_the_file_and_limit(env, name):
    path, read, what = config_readers(env)[name]
    filler = CONTENT_MARK * (MAX_CONFIG_BYTES // len(CONTENT_MARK) + 1)
    path.write_text(json.dumps({"filler": filler}))
    with pytest.raises(ClientError) as info:
        read()
    message = str(info.value)
    assert message.startswith(f"{what} {path} is ") and f"the limit is {MAX_CONFIG_BYTES} bytes" in message
    assert_clean(message)


@pytest.mark.parametrize("name", ["hyperparameters.json", "inputdataconfig.json", "resourceconfig.json"])
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5000, 200_000])
def test_config_file_nested_too_deeply(env, name, depth):
    path, read, what = config_readers(env)[name]
    if depth <= 900:
        path.write_text(json.dumps({"a": nested(depth - 1, CONTENT_MARK)}))
    else:  # past what json.dumps itself can write
        path.write_text("[" * depth + json.dumps(CONTENT_MARK) + "]" * depth)
    with pytest.raises(ClientError, match=f"nested too deeply: more than {MAX_JSON_DEPTH} levels") as info:
        read()
    assert str(info.value).startswith(f"{what} {path}")
    assert_clean(str(info.value))


def test_depth_bound_is_exact_and_counts_objects_and_arrays(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps(nested(MAX_JSON_DEPTH)))
    assert read_json_file(path, "x") is not None
    path.write_text(json.dumps(nested(MAX_JSON_DEPTH + 1)))
    with pytest.raises(ClientError, match="nested too deeply"):
        read_json_file(path, "x")
    # Wide but shallow is fine, however many values.
    path.write_text(json.dumps({"list": list(range(50_000)), "map": {str(i): [i] for i in range(5_000)}}))
    assert len(read_json_file(path, "x")["list"]) == 50_000
    # Brackets inside strings are not nesting.
    path.write_text(json.dumps({"s": "[" * 10_000}))
    assert read_json_file(path, "x") == {"s": "[" * 10_000}


def test_real_sagemaker_config_files_pass(env):
    config = env.config_dir
    (config / "resourceconfig.json").write_text(
        json.dumps(
            {
                "current_host": "algo-1",
                "hosts": ["algo-1", "algo-2"],
                "current_group_name": "homogeneousCluster",
                "instance_groups": [
                    {"instance_group_name": "homogeneousCluster", "instance_type": "ml.p3.2xlarge", "hosts": ["algo-1"]}
                ],
                "network_interface_name": "eth0",
            }
        )
    )
    (config / "inputdataconfig.json").write_text(
        json.dumps({"train": {"TrainingInputMode": "File", "ShuffleConfig": {"Seed": 7}, "S3DistributionType": "x"}})
    )
    assert env.resources().hosts == ("algo-1", "algo-2")
    assert env.channels()["train"].distribution == "x"


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("x" * (MAX_LABEL_MAP_BYTES + 1), f"the limit is {MAX_LABEL_MAP_BYTES} bytes"),
        (json.dumps({"map": {"1": nested(MAX_JSON_DEPTH, CONTENT_MARK)}}), "nested too deeply"),
        ('{"map": {"1": "' + CONTENT_MARK + '"', "not valid JSON"),
        (b"\xff\xfe" + CONTENT_MARK.encode(), "not UTF-8"),
    ],
    ids=["too big", "too deep", "broken", "not utf-8"],
)
def test_label_map_bounds(tmp_path, monkeypatch, content, fragment):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    path = tmp_path / "train_label_map.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ClientError, match=fragment) as info:
        load_label_map(tmp_path, "train")
    assert f"{tmp_path.name}/train_label_map.json" in str(info.value)  # channel-relative, as uploaded
    assert_clean(str(info.value))


def test_a_pipe_cannot_exceed_the_bound(tmp_path):
    """The bound holds on the bytes read, not only on what stat() said (a FIFO reports size 0)."""
    fifo = tmp_path / "hyperparameters.json"
    os.mkfifo(fifo)
    data = json.dumps({"filler": "x" * 5000}).encode()
    writer = subprocess.Popen([sys.executable, "-c", f"open({str(fifo)!r}, 'wb').write({data!r})"])
    try:
        with pytest.raises(ClientError, match="the limit is 1000 bytes"):
            read_json_file(fifo, "hyperparameters file", max_bytes=1000)
    finally:
        writer.kill()
        writer.wait()


@pytest.mark.parametrize(
    "hyperparameters, fragment",
    [
        (lambda: json.dumps({"filler": CONTENT_MARK * 70_000}), "the limit is 1048576 bytes"),
        (lambda: "[" * 100 + '"' + CONTENT_MARK + '"' + "]" * 100, "nested too deeply"),
    ],
    ids=["too big", "too deep"],
)
def test_train_failure_text_holds_no_secret_and_no_content(tmp_path, hyperparameters, fragment):
    """The real `train` command: output/failure, stdout and stderr name the problem and nothing else."""
    config = tmp_path / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(hyperparameters())
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(tmp_path), "AWS_SECRET_ACCESS_KEY": SECRET}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "train")], env=env, capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert proc.returncode == 2
    failure = (tmp_path / "output" / "failure").read_text()
    assert failure.startswith("ClientError: hyperparameters file") and fragment in failure
    for text in (failure, proc.stdout, proc.stderr):
        assert_clean(text)


# -- the scoring app: debug off, and internal errors say nothing about the host -----------------


class ExplodingHandler:
    """A loaded model whose inference fails with a message full of host details."""

    initialized = True

    def handle(self, data, context):
        raise RuntimeError(
            f"cannot open /opt/ml/model/model_best.params with key {os.environ['AWS_SECRET_ACCESS_KEY']}"
        )


def test_flask_debug_is_off_and_a_500_carries_only_a_request_id(tmp_path, monkeypatch, caplog):
    from serve.app import create_app
    from serve.settings import ServerSettings

    monkeypatch.setenv("FLASK_DEBUG", "1")  # someone sets it on the endpoint: still no debug mode
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    app = create_app(ServerSettings(model_dir=tmp_path), handler=ExplodingHandler())
    assert app.debug is False
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, "JPEG")
    r = app.test_client().post("/invocations", data=buf.getvalue(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 500 and r.is_json
    assert r.get_json()["error"].startswith("internal error (request id ")
    for leak in (SECRET, "/opt/ml", "model_best", "RuntimeError", "Traceback", str(tmp_path)):
        assert leak not in r.get_data(as_text=True)
    request_id = r.get_json()["error"].split("request id ")[1].rstrip(")")
    assert request_id in caplog.text  # the details are in the log, under the id the client got


# -- nothing is unpickled or evaluated -------------------------------------------------------

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}
UNSAFE_ATTRIBUTES = {"read_pickle", "unsafe_load", "full_load", "load_states"}
# The one reviewed exception (SECURITY.md): MXNet's Trainer.load_states unpickles optimizer state, from
# the job's own checkpoint folder.
ALLOWED = {("gluonseg/training/checkpoint.py", "load_states")}


def source_files() -> list[Path]:
    return sorted(p for folder in ("gluonseg", "serve") for p in (REPO / folder).rglob("*.py") if "_pb2" not in p.name)


def unsafe_uses(path: Path) -> set[tuple[str, str]]:
    """(file, what) for every import, call or keyword in the file that can run code from data."""
    rel = path.relative_to(REPO).as_posix()
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
        if isinstance(node, ast.Import):
            found |= {(rel, a.name) for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.add((rel, node.module))
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in UNSAFE_CALLS:  # the builtins, not re.compile
                found.add((rel, func.id))
            name = func.attr if isinstance(func, ast.Attribute) else ""
            if name in UNSAFE_ATTRIBUTES:
                found.add((rel, name))
            if name == "load" and isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "yaml":
                found.add((rel, "yaml.load"))
            for kw in node.keywords:
                flagged = kw.arg in ("allow_pickle", "debug", "shell") and getattr(kw.value, "value", None) is True
                if flagged:
                    found.add((rel, f"{kw.arg}=True"))
    return found


def test_no_source_unpickles_evaluates_or_turns_debug_on():
    files = source_files()
    assert len(files) > 30 and any(p.name == "app.py" for p in files)
    found = set().union(*(unsafe_uses(p) for p in files))
    assert found == ALLOWED
    # And textually, so that a use hidden from the AST walk (getattr, strings) still shows up.
    needles = ("pickle.load", "eval(", "exec(", "allow_pickle=True", "debug=True", "yaml.load(")
    for path in files:
        text = path.read_text()
        hits = [n for n in needles if n in text.replace("literal_eval(", "")]
        assert not hits, (path, hits)


def test_the_scanner_finds_what_it_looks_for(tmp_path, monkeypatch):
    sample = (
        "import pickle\nfrom marshal import loads\nimport yaml\nimport re\nimport numpy as np\n"
        "eval('1')\nyaml.load(s)\nnp.load(f, allow_pickle=True)\napp.run(debug=True)\nt.load_states(f)\n"
        "re.compile('x')\nyaml.safe_load(s)\nnp.load(f)\n"
    )
    probe = tmp_path / "probe.py"
    probe.write_text(sample)
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    found = {what for _, what in unsafe_uses(probe)}
    assert found == {"pickle", "marshal", "eval", "yaml.load", "allow_pickle=True", "debug=True", "load_states"}


# -- the serving image ------------------------------------------------------------------------


def test_serving_image_runs_as_a_non_root_user():
    lines = [line.strip() for line in (REPO / "Dockerfile.serve").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    users = [i for i, line in enumerate(instructions) if line.upper().startswith("USER ")]
    assert users, "Dockerfile.serve has no USER instruction: the server would run as root"
    user = instructions[users[-1]].split()[1].split(":")[0]
    assert user not in ("root", "0")
    created = [line for line in instructions if "useradd" in line and line.split()[-1] == user]
    assert created and "--uid 0 " not in created[0] + " "
    # The user is in force for the process SageMaker starts: nothing after it switches back.
    start = [i for i, line in enumerate(instructions) if line.upper().startswith(("ENTRYPOINT", "CMD"))]
    assert start and min(start) > users[-1]
    assert not any("FLASK_DEBUG" in line or "FLASK_ENV" in line for line in instructions)
