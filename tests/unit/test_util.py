import hashlib
import os
import socket

import pytest

from gluonseg import util


def test_available_cpus_follows_the_affinity_mask():
    assert util.available_cpus() == len(os.sched_getaffinity(0))


def test_free_port_can_be_bound_right_away():
    port = util.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_file_digest_matches_hashlib_on_a_file_larger_than_one_read(tmp_path):
    data = os.urandom(3 * 2**20 + 7)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert util.file_digest(path) == hashlib.sha256(data).hexdigest()
    assert util.file_digest(path, "sha1") == hashlib.sha1(data).hexdigest()


def test_error_summary_finds_mxnets_reason_under_its_stack():
    import mxnet as mx

    from gluonseg.errors import error_summary

    with pytest.raises(mx.base.MXNetError) as caught:
        mx.nd.load(__file__)  # not an NDArray file
    summary = error_summary(caught.value)
    assert summary.startswith("Check failed: ") and summary.endswith("Invalid NDArray file format")
    assert error_summary(ValueError("first\nsecond")) == "first"
    assert error_summary(KeyError()) == "KeyError"


def test_params_digest_reads_a_file_once_until_it_changes(tmp_path, monkeypatch):
    path = tmp_path / "model_best.params"
    path.write_bytes(b"a" * 1000)
    reads = []
    real = util.file_digest
    monkeypatch.setattr(util, "file_digest", lambda p, a="sha256": reads.append(p) or real(p, a))
    first = util.params_digest(path)
    assert first == real(path) and util.params_digest(path) == first and len(reads) == 1
    assert util.params_digest(path, "sha1") == real(path, "sha1") and len(reads) == 2  # per algorithm

    path.write_bytes(b"b" * 1000)  # same size: the new mtime tells
    os.utime(path, ns=(1, 2))
    assert util.params_digest(path) == real(path) != first and len(reads) == 3
    path.write_bytes(b"b" * 1001)
    os.utime(path, ns=(1, 2))  # same mtime: the new size tells
    assert util.params_digest(path) == real(path) and len(reads) == 4
