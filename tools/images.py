"""The container rig: a Docker engine, a base image and both CPU images, built the way a user builds them.

    python -m tools.images build        # the engine (installed and started if need be), the base, both images
    python -m tools.images sizes        # the images' sizes, as BENCHMARKS.md records them

Used by `make images` and by tests/containers (a session fixture), so `make test` runs the images too.
What it does, in order:
1. The Docker client and engine of Debian's `docker.io` package (not another `docker` earlier on PATH: the
   Debian client is the one whose BuildKit matches its engine). Missing: installed with apt-get as root
   (with `mmdebstrap` for step 2); not root: the one command to run is printed and the rig fails.
2. An engine that answers, or one started here: `dockerd --bridge=none --iptables=false` (no bridge
   network: containers run with `--network host` or `--network none`). The rig stops the one it started.
3. The base image `python:3.11-slim-bookworm`, pulled when Docker Hub answers; else a stand-in made from
   Debian's own packages (`mmdebstrap`, bookworm, python3.11 + venv + ca-certificates, the host's apt sources)
   and `docker import`ed, built once and kept. GLUONSEG_BASE_IMAGE names another base outright.
4. The images, with BuildKit and `--network host`: `Dockerfile.train --build-arg VARIANT=cpu` and
   `Dockerfile.serve`. pip inside the build trusts GLUONSEG_BUILD_CA_BUNDLE (default: the host's CA bundle,
   /etc/ssl/certs/ca-certificates.crt), handed in as a BuildKit secret so it never enters a layer: what a
   build behind a TLS-inspecting proxy needs. The build cache stays in the engine between runs.

The training image is built without bundled ImageNet weights (`--build-arg PRETRAINED=`): their host is
gone (GluonCV #1778) and the SHA-1 check refuses anything else; the tests mount weights instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEBIAN_DOCKER = Path("/usr/bin/docker")
DEBIAN_DOCKERD = Path("/usr/sbin/dockerd")
OFFICIAL_BASE = "python:3.11-slim-bookworm"
STANDIN_BASE = "gluonseg-standin/python:3.11-slim-bookworm"
CA_BUNDLE_ENV = "GLUONSEG_BUILD_CA_BUNDLE"
BASE_ENV = "GLUONSEG_BASE_IMAGE"
DEFAULT_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
APT_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
STATE = Path(os.environ.get("GLUONSEG_RIG_DIR", "/tmp/gluonseg-rig"))
INSTALL_COMMAND = "apt-get update && apt-get install -y docker.io mmdebstrap"
PULL_TIMEOUT_S = 60
ENGINE_START_S = 60


class RigError(RuntimeError):
    """The rig cannot go on; the message says what to do."""


@dataclass(frozen=True)
class Image:
    tag: str
    dockerfile: str
    build_args: tuple[tuple[str, str], ...] = ()


TRAIN_IMAGE = Image("gluonseg-train:cpu", "Dockerfile.train", (("VARIANT", "cpu"), ("PRETRAINED", "")))
SERVE_IMAGE = Image("gluonseg-serve:cpu", "Dockerfile.serve")
IMAGES = (TRAIN_IMAGE, SERVE_IMAGE)


def log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


def docker_binary() -> str:
    """Debian's docker client, installed as root when missing."""
    if not DEBIAN_DOCKER.exists() or not DEBIAN_DOCKERD.exists() or shutil.which("mmdebstrap") is None:
        if os.geteuid() != 0:
            raise RigError(
                f"Docker (Debian's docker.io) and mmdebstrap are missing and this is not root; run: "
                f"sudo sh -c '{INSTALL_COMMAND}'"
            )
        log(f"installing Debian's docker.io and mmdebstrap: {INSTALL_COMMAND}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "docker.io", "mmdebstrap"],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    return str(DEBIAN_DOCKER)


def docker(*args: str, check: bool = True, timeout: float | None = None, **kwargs) -> subprocess.CompletedProcess:
    """`docker ARGS` with Debian's client and BuildKit; output captured unless `stdout`/`stderr` are given."""
    kwargs.setdefault("capture_output", "stdout" not in kwargs and "stderr" not in kwargs)
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    proc = subprocess.run([docker_binary(), *args], text=True, timeout=timeout, env=env, **kwargs)
    if check and proc.returncode != 0:
        raise RigError(f"docker {' '.join(args[:3])} ... exited {proc.returncode}: {(proc.stderr or '')[-2000:]}")
    return proc


def engine_answers() -> bool:
    try:
        return docker("version", "--format", "{{.Server.Version}}", check=False, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@contextlib.contextmanager
def engine() -> Iterator[None]:
    """A Docker engine that answers for the block: the one running, or one started here and stopped after."""
    docker_binary()
    if engine_answers():
        yield
        return
    if os.geteuid() != 0:
        raise RigError(
            "no Docker engine answers and only root can start one here; run: "
            "sudo dockerd --bridge=none --iptables=false &"
        )
    STATE.mkdir(parents=True, exist_ok=True)
    log_file = open(STATE / "dockerd.log", "ab")  # noqa: SIM115 - held open for dockerd's life
    log("starting dockerd --bridge=none --iptables=false (log: %s)" % (STATE / "dockerd.log"))
    daemon = subprocess.Popen(
        [str(DEBIAN_DOCKERD), "--bridge=none", "--iptables=false", "--pidfile", str(STATE / "dockerd.pid")],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + ENGINE_START_S
        while not engine_answers():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RigError(f"dockerd did not come up (exit {daemon.poll()}); see {STATE / 'dockerd.log'}")
            time.sleep(0.5)
        yield
    finally:
        log("stopping the dockerd this rig started")
        daemon.terminate()
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log_file.close()


def image_exists(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False).returncode == 0


def ca_bundle() -> Path | None:
    """The CA bundle pip trusts inside a build: GLUONSEG_BUILD_CA_BUNDLE, else the host's, if present."""
    given = os.environ.get(CA_BUNDLE_ENV)
    if given:
        path = Path(given)
        if not path.is_file():
            raise RigError(f"{CA_BUNDLE_ENV}={given} is not a file")
        return path
    return DEFAULT_CA_BUNDLE if DEFAULT_CA_BUNDLE.is_file() else None


def base_image() -> str:
    """GLUONSEG_BASE_IMAGE, else the official base when it can be pulled, else the stand-in (made once)."""
    given = os.environ.get(BASE_ENV)
    if given:
        return given
    if image_exists(OFFICIAL_BASE):
        return OFFICIAL_BASE
    try:
        if docker("pull", "-q", OFFICIAL_BASE, check=False, timeout=PULL_TIMEOUT_S).returncode == 0:
            return OFFICIAL_BASE
    except subprocess.TimeoutExpired:
        pass
    if not image_exists(STANDIN_BASE):
        build_standin()
    else:
        log(f"Docker Hub unreachable: using the stand-in base {STANDIN_BASE} (made earlier)")
    return STANDIN_BASE


def build_standin() -> None:
    """python:3.11-slim-bookworm's stand-in: Debian bookworm's python3.11 from Debian's packages."""
    sources = next((path for path in APT_SOURCES if path.is_file()), None)
    if sources is None:
        raise RigError(f"no apt sources file ({', '.join(map(str, APT_SOURCES))}) to build the stand-in base from")
    log(f"Docker Hub unreachable: building the stand-in base {STANDIN_BASE} with mmdebstrap from {sources}")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gluonseg-standin-") as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        subprocess.run(
            [
                "mmdebstrap",
                "--variant=minbase",
                "--include=python3.11,python3.11-venv,ca-certificates",
                "bookworm",
                str(tarball),
                str(sources),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        docker("import", "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python3.11"]', str(tarball), STANDIN_BASE)
    log(f"stand-in base made in {time.monotonic() - start:.0f} s")


def build(image: Image, base: str, quiet: bool = False) -> float:
    """Build `image` on `base` (BuildKit, host network, the CA bundle as a secret); seconds taken."""
    args = ["build", "--network", "host", "-f", image.dockerfile, "-t", image.tag, "--build-arg", f"BASE_IMAGE={base}"]
    for name, value in image.build_args:
        args += ["--build-arg", f"{name}={value}"]
    bundle = ca_bundle()
    if bundle is not None:
        args += ["--secret", f"id=pip_ca,src={bundle}"]
    if quiet:
        args.append("-q")
    start = time.monotonic()
    log(f"building {image.tag} from {image.dockerfile} on {base}")
    out = None if not quiet else subprocess.DEVNULL
    docker(*args, ".", cwd=REPO, stdout=out, stderr=None if not quiet else subprocess.PIPE)
    seconds = time.monotonic() - start
    log(f"built {image.tag} in {seconds:.0f} s")
    return seconds


def build_all(quiet: bool = False) -> dict[str, float]:
    base = base_image()
    return {image.tag: build(image, base, quiet) for image in IMAGES}


def sizes() -> dict[str, int]:
    """Each image's size in bytes, as `docker image inspect` gives it."""
    found = {}
    for image in IMAGES:
        info = json.loads(docker("image", "inspect", image.tag).stdout)
        found[image.tag] = int(info[0]["Size"])
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.images", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("build", "sizes"))
    args = parser.parse_args(argv)
    try:
        with engine():
            if args.command == "build":
                start = time.monotonic()
                for tag, seconds in build_all().items():
                    log(f"{tag}: {seconds:.0f} s")
                log(f"both images in {time.monotonic() - start:.0f} s")
            for tag, size in sizes().items():
                print(f"{tag}\t{size / 1e9:.2f} GB")
    except (RigError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
