"""Finding the ImageNet weights of the backbone (`resnet50_v1s`, `resnet101_v1s`) and loading them.

Resolution order, first hit wins:
  1. `$GLUONSEG_PRETRAINED_DIR/<name>-<sha1[:8]>.params` (GluonCV's cache name; the full SHA-1 is checked)
     or `$GLUONSEG_PRETRAINED_DIR/<name>.params` (checked by the strict load in `load_backbone`).
     Docker images fill this folder at build time with `python -m gluonseg.pretrained --fetch DEST`.
  2. GluonCV's model store: the cache under `$MXNET_HOME/models` (default `~/.mxnet/models`), else a
     download of `{MXNET_GLUON_REPO}gluon/models/<name>-<sha1[:8]>.zip` (a zip holding
     `<name>-<sha1[:8]>.params`), checked against the SHA-1 in GluonCV's table.
If both fail the job stops with a ClientError that says why and how to fix it: the original weight
host has failed since 2024 (GluonCV issue #1778), and silently training from random weights would
give a much worse model that looks like a success.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

from gluonseg.errors import ClientError, error_summary
from gluonseg.util import file_digest

log = logging.getLogger(__name__)

PRETRAINED_DIR_ENV = "GLUONSEG_PRETRAINED_DIR"
BACKBONE_WEIGHTS = ("resnet50_v1s", "resnet101_v1s")


def _model_store():
    # Imported late: gluoncv pulls in mxnet, which the CLI's light commands do not need.
    from gluoncv.model_zoo import model_store

    return model_store


def expected_sha1(name: str) -> str:
    """The SHA-1 GluonCV's model store publishes for `name`."""
    if name not in BACKBONE_WEIGHTS:
        raise ClientError(f"no pretrained weights are known for {name!r}; known: {', '.join(BACKBONE_WEIGHTS)}")
    return _model_store()._model_sha1[name]


def cache_file_name(name: str) -> str:
    """GluonCV's file name for the weights: `<name>-<sha1[:8]>.params`."""
    return f"{name}-{expected_sha1(name)[:8]}.params"


def mirror_url(name: str) -> str:
    """The URL GluonCV's model store downloads `name` from (honours $MXNET_GLUON_REPO)."""
    store = _model_store()
    repo = os.environ.get("MXNET_GLUON_REPO", store.apache_repo_url)
    if not repo.endswith("/"):
        repo += "/"
    return store._url_format.format(repo_url=repo, file_name=f"{name}-{expected_sha1(name)[:8]}")


def _from_bundled_dir(name: str, reasons: list[str]) -> Path | None:
    folder = os.environ.get(PRETRAINED_DIR_ENV)
    if not folder:
        reasons.append(f"${PRETRAINED_DIR_ENV} is not set")
        return None
    root = Path(folder)
    if not root.is_dir():
        reasons.append(f"${PRETRAINED_DIR_ENV}={folder} is not a folder")
        return None
    hashed = root / cache_file_name(name)
    if hashed.is_file():
        want = expected_sha1(name)
        got = file_digest(hashed, "sha1")
        if got == want:
            return hashed
        # A corrupt bundled file is worth a warning even when the model store saves the day.
        log.warning("%s has SHA-1 %s, expected %s; ignoring it", hashed, got, want)
        reasons.append(f"{hashed} has SHA-1 {got}, expected {want} (SHA-1 mismatch)")
    plain = root / f"{name}.params"
    if plain.is_file():
        return plain
    if not hashed.is_file():
        reasons.append(f"neither {plain.name} nor {hashed.name} is in {root}")
    return None


def _describe_download_failure(exc: Exception, url: str) -> str:
    import requests

    if isinstance(exc, requests.exceptions.ConnectionError):
        # requests' message nests the socket error deep inside; the errno part is what helps.
        found = re.search(r"\[Errno -?\d+\][^'\")]*", str(exc))
        return f"cannot connect to {url} ({found.group(0) if found else type(exc).__name__})"
    if isinstance(exc, requests.exceptions.RequestException):
        return f"download of {url} failed: {exc}"
    text = str(exc)
    if "different hash" in text:
        return f"the file downloaded from {url} failed SHA-1 check (SHA-1 mismatch: the mirror serves other bytes)"
    if "Failed downloading" in text:
        return f"{url} did not answer with HTTP 200"
    if type(exc).__name__ == "BadZipFile":
        return f"{url} is not a zip file"
    if isinstance(exc, FileNotFoundError):
        return f"the zip from {url} does not hold {Path(url).stem}.params"
    return f"model store failed for {url}: {type(exc).__name__}: {exc}"


def _from_model_store(name: str, reasons: list[str]) -> Path | None:
    store = _model_store()
    root = os.path.join(os.environ.get("MXNET_HOME", os.path.join("~", ".mxnet")), "models")
    url = mirror_url(name)
    try:
        return Path(store.get_model_file(name, root=root))
    except Exception as exc:  # noqa: BLE001 - every failure becomes a reason in the user's message
        reasons.append(_describe_download_failure(exc, url))
        return None


def resolve_weights_file(name: str) -> Path:
    """The path of the ImageNet weights for `name`, or a ClientError saying how to provide them."""
    sha1 = expected_sha1(name)
    reasons: list[str] = []
    for source in (_from_bundled_dir, _from_model_store):
        found = source(name, reasons)
        if found is not None:
            log.info("pretrained weights for %s: %s", name, found)
            return found
    # The fix comes before the reasons: only the first 1024 characters reach FailureReason.
    raise ClientError(
        f"Cannot get the ImageNet weights {name} for the backbone (use_pretrained_model=True). To fix: put "
        f"{name}.params or {name}-{sha1[:8]}.params (SHA-1 {sha1}) in the folder named by ${PRETRAINED_DIR_ENV}, "
        f"or point $MXNET_GLUON_REPO at a mirror that serves gluon/models/{name}-{sha1[:8]}.zip, or set "
        f"use_pretrained_model=False to train the backbone from random weights. Tried: {'; '.join(reasons)}."
    )


def load_backbone(name: str, ctx=None, **backbone_kwargs):
    """A GluonCV ResNetV1b built with `backbone_kwargs` and loaded strictly from the resolved weights.

    This is what `resnet50_v1s(pretrained=True, **kwargs)` does, minus the download policy.
    """
    import mxnet as mx
    from gluoncv.model_zoo import resnet50_v1s, resnet101_v1s

    builders = {"resnet50_v1s": resnet50_v1s, "resnet101_v1s": resnet101_v1s}
    if name not in builders:
        raise ClientError(f"no pretrained weights are known for {name!r}; known: {', '.join(BACKBONE_WEIGHTS)}")
    path = resolve_weights_file(name)
    net = builders[name](pretrained=False, **backbone_kwargs)
    try:
        net.load_parameters(str(path), ctx=ctx if ctx is not None else mx.cpu())
    except (AssertionError, ValueError, mx.base.MXNetError) as exc:
        raise ClientError(
            f"{path} does not hold {name} weights: {error_summary(exc, 300)}. Replace it with GluonCV's "
            f"{cache_file_name(name)}, or set use_pretrained_model=False."
        ) from None
    return net


def fetch_to_dir(names: Iterable[str], dest: Path | str) -> list[Path]:
    """Copy verified weights into `dest` under their cache names (for the Docker build)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        reasons: list[str] = []
        src = _from_model_store(name, reasons)
        if src is None:
            raise ClientError(f"cannot fetch {name}: {'; '.join(reasons)}")
        target = dest / cache_file_name(name)
        if src.resolve() != target.resolve():
            shutil.copyfile(src, target)
        if file_digest(target, "sha1") != expected_sha1(name):
            raise ClientError(f"{target}: SHA-1 mismatch after copying from {src}")
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gluonseg.pretrained", description=__doc__.splitlines()[0])
    parser.add_argument("--fetch", metavar="DEST", required=True, help="folder to fill with verified weights")
    parser.add_argument("names", nargs="*", default=list(BACKBONE_WEIGHTS), help="weights to fetch (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        for path in fetch_to_dir(args.names, args.fetch):
            print(path)
    except ClientError as exc:
        print(exc.failure_text(), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
