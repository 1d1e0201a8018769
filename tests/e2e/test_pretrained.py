"""Resolving ImageNet backbone weights: bundled folder, GluonCV's model store over a local mirror, failures.

The tests make their own "ImageNet" weights (random arrays in the resnet50_v1s layout). Nothing here
reaches the internet: every test runs with MXNET_GLUON_REPO on 127.0.0.1 and no proxy.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from gluoncv.model_zoo import model_store

from gluonseg import pretrained
from gluonseg.errors import ClientError
from gluonseg.models import backbone_parameters, build_network
from gluonseg.util import free_port
from tests.support.weights import write_backbone_weights

NAME = "resnet50_v1s"
REAL_SHA1 = "25a187fa281ddc98afbcd0cc0f0646885b874b80"  # GluonCV's published hash for resnet50_v1s


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No test may reach the real weight host: a dead local mirror, a private cache, no proxies."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("MXNET_GLUON_REPO", f"http://127.0.0.1:{free_port()}/")
    monkeypatch.setenv("MXNET_HOME", str(tmp_path / "mxnet_home"))
    monkeypatch.delenv(pretrained.PRETRAINED_DIR_ENV, raising=False)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A resnet50_v1s parameter file with random values everywhere (BN statistics included)."""
    path = tmp_path_factory.mktemp("weights") / f"{NAME}.params"
    arrays = write_backbone_weights(path, NAME)
    sha1 = hashlib.sha1(path.read_bytes()).hexdigest()
    return path, arrays, sha1


class Mirror:
    """A static file server on 127.0.0.1 laid out like GluonCV's weight host."""

    def __init__(self, root: Path):
        self.root = root
        self.requests: list[str] = []
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):  # noqa: N802 - http.server's name
                mirror.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, file_name: str, payload: Path | bytes) -> None:
        """Serve gluon/models/<file_name>.zip holding <file_name>.params (GluonCV's layout)."""
        folder = self.root / "gluon" / "models"
        folder.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(folder / f"{file_name}.zip", "w", zipfile.ZIP_STORED) as zf:
            if isinstance(payload, Path):
                zf.write(payload, f"{file_name}.params")
            else:
                zf.writestr(f"{file_name}.params", payload)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    m = Mirror(tmp_path / "mirror")
    monkeypatch.setenv("MXNET_GLUON_REPO", m.url)
    yield m
    m.close()


def assert_backbone_equals_file(net, arrays: dict[str, np.ndarray]) -> None:
    params = backbone_parameters(net)
    assert set(params) == {k for k in arrays if not k.startswith("fc.")}
    for key, param in params.items():
        assert np.array_equal(param.data().asnumpy(), arrays[key]), key


def test_bundled_plain_file_sets_every_backbone_parameter_and_no_head_parameter(weights, tmp_path, monkeypatch):
    path, arrays, _ = weights
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    (bundled / f"{NAME}.params").symlink_to(path)
    monkeypatch.setenv(pretrained.PRETRAINED_DIR_ENV, str(bundled))

    mx.random.seed(1)
    first = build_network("fcn", "resnet-50", 5, crop_size=64, base_size=64, pretrained_backbone=True)
    assert_backbone_equals_file(first, arrays)
    mx.random.seed(2)
    second = build_network("fcn", "resnet-50", 5, crop_size=64, base_size=64, pretrained_backbone=True)
    assert_backbone_equals_file(second, arrays)
    # The heads are GluonCV's random initialisation: different seeds, different heads.
    heads = ("head.block.0.weight", "auxlayer.block.4.weight")
    for key in heads:
        a = first._collect_params_with_prefix()[key].data().asnumpy()
        b = second._collect_params_with_prefix()[key].data().asnumpy()
        assert not np.array_equal(a, b), key


def test_bundled_cache_name_is_sha1_checked(weights, tmp_path, monkeypatch):
    path, _, sha1 = weights
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    hashed = bundled / f"{NAME}-{REAL_SHA1[:8]}.params"
    hashed.symlink_to(path)
    monkeypatch.setenv(pretrained.PRETRAINED_DIR_ENV, str(bundled))
    # Our bytes do not have GluonCV's hash: refused, and the (dead) mirror cannot help either.
    with pytest.raises(ClientError) as err:
        pretrained.resolve_weights_file(NAME)
    assert "SHA-1 mismatch" in str(err.value) and str(hashed) in str(err.value)

    # With the table saying our hash, the same cache-named file is accepted.
    monkeypatch.setitem(model_store._model_sha1, NAME, sha1)
    renamed = bundled / f"{NAME}-{sha1[:8]}.params"
    hashed.rename(renamed)
    assert pretrained.resolve_weights_file(NAME) == renamed


def test_mirror_download_is_verified_and_loaded_then_fetch_fills_a_bundle(weights, mirror, tmp_path, monkeypatch):
    path, arrays, sha1 = weights
    # We cannot forge GluonCV's real hash, so the table is pointed at the hash of our file.
    monkeypatch.setitem(model_store._model_sha1, NAME, sha1)
    file_name = f"{NAME}-{sha1[:8]}"
    mirror.publish(file_name, path)

    resolved = pretrained.resolve_weights_file(NAME)
    assert resolved == tmp_path / "mxnet_home" / "models" / f"{file_name}.params"
    assert mirror.requests == [f"/gluon/models/{file_name}.zip"]
    backbone = pretrained.load_backbone(NAME, dilated=True)
    for key, param in backbone._collect_params_with_prefix().items():
        assert np.array_equal(param.data().asnumpy(), arrays[key]), key

    # The Docker-build helper: verified copies under the cache name (served from the cache this time).
    dest = tmp_path / "bundle"
    assert pretrained.main(["--fetch", str(dest), NAME]) == 0
    assert [p.name for p in dest.iterdir()] == [f"{file_name}.params"]
    assert hashlib.sha1((dest / f"{file_name}.params").read_bytes()).hexdigest() == sha1
    assert len(mirror.requests) == 1

    # That folder then works on its own, with the mirror gone.
    mirror.close()
    monkeypatch.setenv("MXNET_GLUON_REPO", f"http://127.0.0.1:{free_port()}/")
    monkeypatch.setenv("MXNET_HOME", str(tmp_path / "empty_home"))
    monkeypatch.setenv(pretrained.PRETRAINED_DIR_ENV, str(dest))
    assert pretrained.resolve_weights_file(NAME) == dest / f"{file_name}.params"


def test_mirror_serving_other_bytes_is_refused(mirror):
    mirror.publish(f"{NAME}-{REAL_SHA1[:8]}", b"these are not the weights you are looking for")
    with pytest.raises(ClientError) as err:
        pretrained.resolve_weights_file(NAME)
    text = str(err.value)
    assert "SHA-1 mismatch" in text
    assert f"{mirror.url}gluon/models/{NAME}-{REAL_SHA1[:8]}.zip" in text
    assert mirror.requests == [f"/gluon/models/{NAME}-{REAL_SHA1[:8]}.zip"]


def test_mirror_without_the_file_is_reported(mirror):
    with pytest.raises(ClientError, match="did not answer with HTTP 200"):
        pretrained.resolve_weights_file("resnet101_v1s")


def test_no_mirror_says_how_to_fix(monkeypatch):
    port = free_port()
    monkeypatch.setenv("MXNET_GLUON_REPO", f"http://127.0.0.1:{port}")  # no trailing slash: GluonCV adds it
    with pytest.raises(ClientError) as err:
        build_network("psp", "resnet-101", 5, crop_size=64, base_size=64, pretrained_backbone=True)
    text = str(err.value)
    assert f"cannot connect to http://127.0.0.1:{port}/gluon/models/resnet101_v1s-bd93a83c.zip" in text
    assert "Errno" in text
    for fix in ("GLUONSEG_PRETRAINED_DIR", "MXNET_GLUON_REPO", "use_pretrained_model=False", "resnet101_v1s.params"):
        assert fix in text
    assert text.index("To fix") < text.index("Tried:")  # the fix survives the 1024-character cut


def test_bundled_file_with_wrong_content_names_the_file(tmp_path, monkeypatch):
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    mx.nd.save(str(bundled / f"{NAME}.params"), {"conv1.0.weight": mx.nd.zeros((64, 3, 3, 3))})
    monkeypatch.setenv(pretrained.PRETRAINED_DIR_ENV, str(bundled))
    with pytest.raises(ClientError, match=rf"{NAME}\.params does not hold {NAME} weights"):
        build_network("fcn", "resnet-50", 5, crop_size=64, base_size=64, pretrained_backbone=True)


def test_fetch_failure_and_unknown_name(capsys, tmp_path):
    assert pretrained.main(["--fetch", str(tmp_path / "dest"), NAME]) == 1
    assert "ClientError: cannot fetch resnet50_v1s" in capsys.readouterr().err
    with pytest.raises(ClientError, match="resnet18_v1b"):
        pretrained.resolve_weights_file("resnet18_v1b")
