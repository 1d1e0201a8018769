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


def _cgroup_root(tmp_path, self_cgroup: str, files: dict[str, str]):
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text(self_cgroup)
    for name, text in files.items():
        path = tmp_path / "sys/fs/cgroup" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    "self_cgroup,files,quota",
    [
        # cgroup v2 in a container (`docker run --cpus 1`): the container's cgroup is the mount's root.
        ("0::/\n", {"cpu.max": "100000 100000\n"}, 1.0),
        ("0::/\n", {"cpu.max": "max 100000\n"}, None),
        # v2 on a host: a nested cgroup with a quota of 1.5 CPUs under an unlimited parent.
        ("0::/kubepods/pod1\n", {"cpu.max": "max 100000\n", "kubepods/pod1/cpu.max": "150000 100000\n"}, 1.5),
        # cgroup v1 (`docker run --cpus 1` on a v1 host), with Docker's and Debian's mount names.
        ("4:cpu,cpuacct:/docker/abc\n", {"cpu/cpu.cfs_quota_us": "100000", "cpu/cpu.cfs_period_us": "100000"}, 1.0),
        (
            "4:cpu,cpuacct:/\n",
            {"cpu,cpuacct/cpu.cfs_quota_us": "50000", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
            0.5,
        ),
        ("4:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
        # v1 on a host: the tightest along the path wins.
        (
            "1:cpu:/a/b\n",
            {
                "cpu/cpu.cfs_quota_us": "-1",
                "cpu/cpu.cfs_period_us": "100000",
                "cpu/a/cpu.cfs_quota_us": "300000",
                "cpu/a/cpu.cfs_period_us": "100000",
                "cpu/a/b/cpu.cfs_quota_us": "200000",
                "cpu/a/b/cpu.cfs_period_us": "100000",
            },
            2.0,
        ),
        ("0::/\n", {}, None),  # no cgroup files at all
        ("0::/\n", {"cpu.max": "garbage\n"}, None),
    ],
)
def test_cgroup_cpu_quota_reads_v1_and_v2(tmp_path, self_cgroup, files, quota):
    assert util.cgroup_cpu_quota(_cgroup_root(tmp_path, self_cgroup, files)) == quota


def test_available_cpus_is_capped_by_the_quota_rounded_up(tmp_path):
    cores = len(os.sched_getaffinity(0))
    quarter = _cgroup_root(tmp_path / "q", "0::/\n", {"cpu.max": "25000 100000\n"})
    assert util.available_cpus(quarter) == 1  # never 0
    if cores >= 2:
        one_and_a_half = _cgroup_root(tmp_path / "h", "0::/\n", {"cpu.max": "150000 100000\n"})
        assert util.available_cpus(one_and_a_half) == 2
        one = _cgroup_root(tmp_path / "o", "0::/\n", {"cpu.max": "100000 100000\n"})
        assert util.available_cpus(one) == 1
    many = _cgroup_root(tmp_path / "m", "0::/\n", {"cpu.max": f"{(cores + 8) * 100000} 100000\n"})
    assert util.available_cpus(many) == cores  # a quota above the mask does not add cores
