"""What can be read off the Dockerfiles themselves, GPU variants included (tests/containers builds and runs the
CPU images on a real Docker engine; the GPU bases cannot be pulled here)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def instructions(name: str) -> list[tuple[str, str]]:
    text = (REPO / name).read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def one(name: str, keyword: str) -> str:
    values = [rest for k, rest in instructions(name) if k == keyword]
    assert len(values) == 1, f"{name}: expected one {keyword}, got {values}"
    return values[0]


@pytest.mark.parametrize("name,command", [("Dockerfile.serve", "serve"), ("Dockerfile.train", "train")])
def test_exec_form_entrypoint_dispatches_to_a_real_module(name, command):
    entry = json.loads(one(name, "ENTRYPOINT"))
    assert entry[-2:] == ["-m", "gluonseg.cli.container"]
    assert json.loads(one(name, "CMD")) == [command]
    # The dispatcher the entrypoint names exists and knows the command SageMaker passes.
    proc = subprocess.run(
        [sys.executable, "-m", "gluonseg.cli.container", "bogus"], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 2 and "train|serve" in proc.stderr


@pytest.mark.parametrize("name", ["Dockerfile.serve", "Dockerfile.train"])
def test_images_run_the_readme_runtime_install_from_the_lock_file(name):
    runs = " ".join(rest for k, rest in instructions(name) if k == "RUN")
    assert (
        "make install-deps PYTHON=python3.11 MXNET_PACKAGE=$MXNET_PACKAGE ONNXRUNTIME_PACKAGE=$ONNXRUNTIME_PACKAGE"
        in runs
    )
    assert "make install-runtime PYTHON=python3.11" in runs and "make install " not in runs + " "
    copies = [rest for k, rest in instructions(name) if k == "COPY"]
    assert copies[0] == "requirements.lock Makefile ./"  # the locked packages before the sources: a warm rebuild
    makefile = (REPO / "Makefile").read_text()
    assert "-r $(VENV)/requirements.txt" in makefile and "requirements.lock" in makefile
    assert "make install" in (REPO / "README.md").read_text()
    assert "libgl1" in runs  # opencv-python, imported by gluoncv, needs libGL


def test_the_cpu_images_share_their_install_layers():
    """The same instructions from the base to the package install: one build's layers serve the other."""

    def shared(name: str) -> list[tuple[str, str]]:
        steps = instructions(name)
        cpu = steps[next(i for i, (k, rest) in enumerate(steps) if k == "FROM" and rest.endswith("AS base-cpu")) :]
        cpu = cpu[: next(i for i, (k, _) in enumerate(cpu[1:], 1) if k == "FROM")]
        final = steps[next(i for i, (k, rest) in enumerate(steps) if rest == "base-${VARIANT}") :]
        final = final[: next(i for i, (k, rest) in enumerate(final) if "make install-runtime" in rest) + 1]
        return cpu + final

    assert shared("Dockerfile.serve") == shared("Dockerfile.train")


def test_serve_image_label_port_and_non_root_user():
    labels = " ".join(rest for k, rest in instructions("Dockerfile.serve") if k == "LABEL")
    assert "com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true" in labels
    assert one("Dockerfile.serve", "EXPOSE") == "8080"
    user = one("Dockerfile.serve", "USER")
    assert user not in ("root", "0")
    assert re.search(rf"useradd .*{user}", " ".join(r for k, r in instructions("Dockerfile.serve") if k == "RUN"))


def test_train_image_is_cuda_112_with_mxnet_cu112_by_default_and_has_a_cpu_variant():
    text = (REPO / "Dockerfile.train").read_text()
    froms = [rest for k, rest in instructions("Dockerfile.train") if k == "FROM"]
    assert froms[-1] == "base-${VARIANT}" and "ARG VARIANT=gpu" in text
    gpu_stage = text.split("AS base-gpu")[1].split("FROM base-")[0]
    assert next(f for f in froms if f.endswith("AS base-gpu")).startswith("nvidia/cuda:11.2")
    assert "MXNET_PACKAGE=mxnet-cu112" in gpu_stage
    cpu_stage = text.split("AS base-cpu")[1].split("FROM ")[0]
    assert "MXNET_PACKAGE=mxnet " in cpu_stage + " " and "ARG BASE_IMAGE=python:3.11-slim-bookworm" in text
    assert "mxnet==1.9.1" in (REPO / "requirements.lock").read_text()
    env = " ".join(rest for k, rest in instructions("Dockerfile.train") if k == "ENV")
    dest = re.search(r"GLUONSEG_PRETRAINED_DIR=(\S+)", env).group(1)
    runs = " ".join(rest for k, rest in instructions("Dockerfile.train") if k == "RUN")
    assert f"-m gluonseg.pretrained --fetch {dest} $PRETRAINED" in runs
    assert 'ARG PRETRAINED="resnet50_v1s resnet101_v1s"' in text  # bundled unless the build says otherwise
    assert all(k != "USER" for k, _ in instructions("Dockerfile.train"))  # root, as SageMaker's training containers


def test_console_scripts_named_by_sagemaker_exist():
    setup = (REPO / "setup.py").read_text()
    for script, target in (
        ("train", "gluonseg.train_entry:main"),
        ("serve", "serve.entry:main"),
        ("gluonseg", "gluonseg.cli:main"),
    ):
        assert f"{script}={target}" in setup
        assert (Path(sys.executable).parent / script).exists()
        module, func = target.split(":")
        assert callable(getattr(__import__(module, fromlist=[func]), func))


def test_serve_image_has_a_gpu_variant_with_onnxruntime_gpu_of_the_locked_version(tmp_path):
    text = (REPO / "Dockerfile.serve").read_text()
    froms = [rest for k, rest in instructions("Dockerfile.serve") if k == "FROM"]
    assert froms[-1] == "base-${VARIANT}" and "ARG VARIANT=cpu" in text
    cpu = next(f for f in froms if f.endswith("AS base-cpu"))
    gpu = next(f for f in froms if f.endswith("AS base-gpu"))
    assert cpu.startswith("${BASE_IMAGE}") and re.match(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime", gpu)
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm" in text
    assert "GLUONSEG_BACKEND" not in text.split("AS base-cpu")[1].split("FROM ")[0]  # the CPU image serves auto
    gpu_stage = text.split("AS base-gpu")[1].split("FROM base-")[0]
    assert "ONNXRUNTIME_PACKAGE=onnxruntime-gpu" in gpu_stage and "GLUONSEG_BACKEND=onnxruntime" in gpu_stage
    assert "python3.11" in gpu_stage and "nginx" in gpu_stage
    runs = " ".join(rest for k, rest in instructions("Dockerfile.serve") if k == "RUN")
    assert (
        "make install-runtime PYTHON=python3.11 MXNET_PACKAGE=$MXNET_PACKAGE ONNXRUNTIME_PACKAGE=$ONNXRUNTIME_PACKAGE"
        in runs
    )
    # The Makefile's own recipe, run for the GPU package: the lock's onnxruntime pin becomes onnxruntime-gpu's.
    recipe = subprocess.run(
        ["make", "-n", "-B", f"VENV={tmp_path}", f"{tmp_path}/.installed", "ONNXRUNTIME_PACKAGE=onnxruntime-gpu"],
        capture_output=True,
        text=True,
        cwd=REPO,
    ).stdout.replace("\\\n", " ")
    sed = next(line for line in recipe.splitlines() if line.startswith("sed "))
    subprocess.run(["bash", "-c", sed], check=True, cwd=REPO)
    lock = (REPO / "requirements.lock").read_text()
    version = re.search(r"^onnxruntime==(\S+)$", lock, re.M).group(1)
    installed = (tmp_path / "requirements.txt").read_text()
    assert f"onnxruntime-gpu=={version}" in installed.splitlines()
    assert not re.search(r"^onnxruntime==", installed, re.M)
    assert re.search(r"^mxnet==", installed, re.M)  # the other swap untouched
