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
