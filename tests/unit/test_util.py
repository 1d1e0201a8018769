import hashlib
import os
import socket

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
