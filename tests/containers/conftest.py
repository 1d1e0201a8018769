"""The images, built once a session by the rig (tools/images.py), and containers removed after each test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.containers import Container, HostServer, answers, pictures
from tools import images

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def built_images():
    """A Docker engine for the session (started here when none answers, stopped after) and both CPU images."""
    with images.engine():
        images.build_all()
        yield {"train": images.TRAIN_IMAGE.tag, "serve": images.SERVE_IMAGE.tag}


@pytest.fixture
def containers(built_images):
    """`make(image_key, command, **options)`: a Container of a built image, removed after the test."""
    made: list[Container] = []

    def make(image: str, command: str, **options) -> Container:
        container = Container(built_images[image], command, **options)
        made.append(container)
        return container

    yield make
    for container in made:
        container.remove()


@pytest.fixture(scope="session")
def packed_model(tmp_path_factory, trained_model_dir, generated_dataset):
    """A model folder as a user packs it after serving it once with `gluonseg serve` (auto's ONNX export and
    backend choice inside), with that server's log and its answers: what the containers are compared with."""
    folder = tmp_path_factory.mktemp("packed")
    model = Path(shutil.copytree(trained_model_dir, folder / "model"))
    jpegs = pictures(generated_dataset)
    server = HostServer(model, folder / "host-serve.log").start()
    try:
        reference = answers(server.url, jpegs)
    finally:
        server.stop()
        log = server.log_path.read_text()
    assert (model / "model.onnx").exists() and (model / "backend-choice.json").exists(), log[-3000:]
    return {"model": model, "log": log, "pictures": jpegs, "answers": reference}
