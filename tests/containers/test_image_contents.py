"""What the built images hold: the runtime lock and nothing of the development set; who they run as."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.support.containers import docker
from tools.dependency_audit import normalize_name, read_lock

REPO = Path(__file__).resolve().parents[2]
# What pip and the package itself add to the venv.
NOT_IN_A_LOCK = {"pip", "gluonseg"}


def installed(tag: str) -> dict[str, str]:
    proc = docker(
        "run", "--rm", "--network", "none", "--entrypoint", "/opt/gluonseg/.venv/bin/pip", tag, "list", "--format=json"
    )
    return {normalize_name(row["name"]): row["version"] for row in json.loads(proc.stdout)}


@pytest.mark.parametrize("image", ["train", "serve"])
def test_the_image_holds_the_runtime_lock_exactly_and_no_development_package(image, built_images):
    runtime = {pin.name: pin.version for pin in read_lock(REPO / "requirements.lock")}
    development = {pin.name for pin in read_lock(REPO / "requirements-dev.lock")}
    assert {"pytest", "ruff", "hypothesis", "grpcio-tools"} <= development
    found = installed(built_images[image])
    assert not development & set(found), f"development packages in {image}: {sorted(development & set(found))}"
    assert {name: found[name] for name in found if name not in NOT_IN_A_LOCK} == runtime


def test_the_images_run_the_serving_default_as_the_right_users(built_images):
    serve = json.loads(docker("image", "inspect", built_images["serve"]).stdout)[0]["Config"]
    train = json.loads(docker("image", "inspect", built_images["train"]).stdout)[0]["Config"]
    for config in (serve, train):
        env = dict(item.split("=", 1) for item in config["Env"])
        assert "GLUONSEG_BACKEND" not in env and "GLUONSEG_PRECISION" not in env  # auto, as `gluonseg serve`
        assert config["Labels"]["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
        assert config["Entrypoint"][-2:] == ["-m", "gluonseg.cli.container"]
    assert serve["User"] == "model-server" and serve["Cmd"] == ["serve"]
    assert train["User"] in ("", "root", "0") and train["Cmd"] == ["train"]  # /opt/ml is root's under SageMaker
    proc = docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "python",
        built_images["serve"],
        "-c",
        "import gluonseg.codecs.record_pb2 as r, google.protobuf as p; print(p.__version__, r.DESCRIPTOR.name)",
    )
    assert re.fullmatch(r"5\.29\.6 record\.proto\n", proc.stdout), proc.stdout + proc.stderr
