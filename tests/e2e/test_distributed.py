"""Multi-host training on MXNet's parameter-server KVStore: exact collectives, data shares, the watchdog,
the local launcher, and real 2-host jobs (2 workers, 2 servers, 1 scheduler on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gluonseg.data import sharding
from gluonseg.data.inputs import resolve_inputs
from gluonseg.environment import Environment, ResourceConfig
from gluonseg.errors import AlgorithmError, ClientError
from gluonseg.hyperparameters import parse
from gluonseg.training.distributed import collectives, packing, watchdog
from gluonseg.training.distributed import spec as cluster_spec
from gluonseg.training.distributed.local import LocalCluster, build_host_tree, exit_code
from gluonseg.util import free_port
from tests.support.e2e_jobs import REPO, TINY

HOSTS2 = ("algo-1", "algo-2")


def resources(current: str, hosts=HOSTS2, interface: str | None = None) -> ResourceConfig:
    return ResourceConfig(current_host=current, hosts=tuple(hosts), network_interface_name=interface)


# ---------------------------------------------------------------------------------------------
# Exact sums through float32 servers


def test_integer_limbs_sum_exactly_in_float32_for_256_workers():
    rng = np.random.default_rng(0)
    workers = [rng.integers(0, 2**55, size=50, dtype=np.int64) for _ in range(255)]
    workers.append(np.full(50, 2**62 - 1, dtype=np.int64) // 256)  # the largest limbs
    total = np.zeros((packing.LIMBS, 50), dtype=np.float32)
    for values in workers:
        total += packing.int_to_limbs(values)  # what the servers do: float32 additions
    np.testing.assert_array_equal(packing.limbs_to_int(total), np.sum(workers, axis=0))
    with pytest.raises(ValueError):
        packing.int_to_limbs([-1])


def test_bytes_survive_float32_packing_and_a_sum_with_zeros():
    for length in (0, 1, 2, 3, 4, 1000, 4097):
        data = os.urandom(length)
        values = packing.bytes_to_floats(data)
        assert values.dtype == np.float32 and values.max(initial=0) < 2**24
        assert packing.floats_to_bytes(values + np.zeros_like(values), length) == data


def test_parameter_digest_covers_every_parameter_value():
    import mxnet as mx

    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Dense(3, in_units=4), mx.gluon.nn.BatchNorm(in_channels=3))
    net.initialize(mx.init.Xavier())
    before = collectives.parameter_digest(net)
    assert before == collectives.parameter_digest(net)
    running_mean = [p for name, p in net.collect_params().items() if name.endswith("running_mean")][0]
    running_mean.set_data(running_mean.data() + 1e-6)  # a statistic the trainer does not update
    assert collectives.parameter_digest(net) != before


def test_lockstep_yields_exactly_the_agreed_steps_and_stops_together():
    cluster = collectives.Cluster.__new__(collectives.Cluster)  # no KVStore: the vote is replaced below
    cluster.host = "algo-1"
    votes = []
    cluster.any_true = lambda name, flag: votes.append(flag) or flag or len(votes) == 4
    stop = collectives.AgreedStop()
    assert list(cluster.lockstep([1, 2], 3, stop)) == [1, 2, 1]  # a short shard is iterated again
    assert not stop.requested and votes == [False] * 3
    taken = []
    for batch in cluster.lockstep([1, 2, 3], 10, stop):  # the 4th vote says another worker was stopped
        taken.append(batch)
        if stop.requested:
            break
    assert taken == [1] and stop.requested
    with pytest.raises(AlgorithmError, match="no batch"):
        list(cluster.lockstep([], 2, collectives.AgreedStop()))


def collectives_worker() -> None:
    """Run in each worker process of test_collectives_are_exact_on_a_real_kvstore."""
    import mxnet as mx

    from gluonseg.metrics import ConfusionMatrix

    cluster = collectives.Cluster.connect(resources(os.environ["TEST_HOST"]), 0)
    i = cluster.index
    out = {"ints": cluster.allreduce_int("ints", np.array([2**40 + 7 + i, 3], dtype=np.int64)).tolist()}
    cm = ConfusionMatrix(3)
    cm.matrix[:] = (i + 1) * 2**30 + np.arange(9).reshape(3, 3)  # beyond float32's exact 2**24
    out["confusion"] = cluster.sum_confusion(cm).matrix.tolist()
    blob = np.random.default_rng(5).bytes(300_001)
    out["blob"] = cluster.broadcast_bytes(blob if i == 0 else None) == blob
    out["empty"] = cluster.broadcast_bytes(None)
    out["vote"] = [cluster.any_true("vote", i == 1), cluster.any_true("vote", False)]
    net = mx.gluon.nn.BatchNorm(in_channels=2)
    net.initialize()
    net.running_mean.set_data(mx.nd.array([i, 2 * i]))
    cluster.average_running_stats(net)
    out["running_mean"] = net.running_mean.data().asnumpy().tolist()
    # One real step through the dist trainer from different initial weights (the start makes them agree before
    # any gradient travels), then worker 1's weights and momentum drift: the epoch-end check must notice and
    # give every worker the first host's parameters and optimizer state back.
    mx.random.seed(10 + i)
    model = mx.gluon.nn.HybridSequential()
    model.add(mx.gluon.nn.Dense(3, in_units=4), mx.gluon.nn.BatchNorm(in_channels=3))
    model.initialize(mx.init.Xavier())
    trainer = mx.gluon.Trainer(
        model.collect_params(),
        "sgd",
        {"learning_rate": 0.1, "momentum": 0.9},
        kvstore=cluster.kvstore,
        update_on_kvstore=False,
    )
    cluster.start(model, trainer, [mx.cpu()], (1, 4))
    with mx.autograd.record():
        loss = model(mx.nd.ones((2, 4)) * (i + 1)).sum()
    loss.backward()
    trainer.step(2 * cluster.num_workers)
    cluster.average_running_stats(model)
    out["agreed"] = [cluster.agree_parameters(model, trainer, [mx.cpu()], 0)]
    if i == 1:
        weight = model[0].weight
        weight.set_data(weight.data() + 1e-3)
        trainer._updaters[0].states[0][:] += 1  # the momentum of that weight
    out["agreed"].append(cluster.agree_parameters(model, trainer, [mx.cpu()], 1))
    out["digest"] = collectives.parameter_digest(model)
    out["momentum"] = trainer._updaters[0].states[0].asnumpy().tolist()
    cluster.close()
    print("RESULT " + json.dumps({k: v if not isinstance(v, bytes) else v.hex() for k, v in out.items()}))


@pytest.mark.timeout(180)
def test_collectives_are_exact_on_a_real_kvstore():
    spec = cluster_spec.ClusterSpec(hosts=HOSTS2, current_host="algo-1", interface="lo", ps_port=free_port())
    base = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "gluonseg.training.distributed.supervisor", role],
            env=spec.role_environment(role, "127.0.0.1", base),
            cwd=REPO,
        )
        for role in ("scheduler", "server", "server")
    ]
    code = "from tests.e2e.test_distributed import collectives_worker; collectives_worker()"
    for host in HOSTS2:
        env = {**spec.role_environment("worker", "127.0.0.1", base), "TEST_HOST": host}
        procs.append(
            subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
        )
    try:
        outputs = [p.communicate(timeout=150)[0] for p in procs[3:]]
        for p in procs[:3]:
            p.wait(timeout=30)  # ps-lite stops the servers and scheduler once both workers closed the KVStore
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = [json.loads(o.split("RESULT ", 1)[1]) for o in outputs]
    assert results[0] == results[1]
    r = results[0]
    assert r["ints"] == [2 * 2**40 + 15, 6]
    assert r["confusion"] == (3 * 2**30 + 2 * np.arange(9).reshape(3, 3)).tolist()
    assert r["blob"] is True and r["empty"] == ""
    assert r["vote"] == [True, False]
    assert r["running_mean"] == [0.5, 1.0]
    assert r["agreed"] == [True, False]  # the drifted worker was noticed and both continue from algo-1's state
    assert all(p.returncode == 0 for p in procs[:3])


# ---------------------------------------------------------------------------------------------
# Which samples each host trains on


def test_fully_replicated_shares_are_disjoint_and_cover_the_set_sharded_keeps_everything():
    samples = [f"s{i:02d}" for i in range(11)]
    hosts = ("algo-1", "algo-2", "algo-3")
    shares = [sharding.split_for_host(samples, "FullyReplicated", resources(h, hosts)) for h in hosts]
    assert sorted(s for share in shares for s in share) == samples
    assert [len(s) for s in shares] == [4, 4, 3]
    assert sharding.split_for_host(samples, "ShardedByS3Key", resources("algo-2", hosts)) == samples


@pytest.mark.parametrize("distribution", ["FullyReplicated", "ShardedByS3Key"])
def test_each_simulated_host_resolves_its_own_share(tmp_path, generated_dataset, distribution):
    hp = parse({k: str(v) for k, v in TINY.items()})
    shares = {}
    for host in HOSTS2:
        base = build_host_tree(tmp_path / host, host, HOSTS2, generated_dataset, {}, distribution)
        env = Environment(base)
        res = env.resources()
        assert res.current_host == host and res.hosts == HOSTS2 and res.network_interface_name == "lo"
        channels = env.channels()
        expected = "ShardedByS3Key" if distribution == "ShardedByS3Key" else "FullyReplicated"
        assert channels["train"].distribution == expected
        assert channels["train_annotation"].distribution == "FullyReplicated"
        inputs = resolve_inputs(env, hp, res)
        shares[host] = inputs
        assert inputs.num_training_samples == len(inputs.train_samples) > 0
    for split in ("train_samples", "validation_samples"):
        names = [s.name for host in HOSTS2 for s in getattr(shares[host], split)]
        assert len(names) == len(set(names)), "a sample went to two hosts"
        channel = "train" if split == "train_samples" else "validation"
        assert sorted(names) == sorted(p.stem for p in (generated_dataset / channel).iterdir())


def test_a_sharded_image_without_its_mask_names_the_file(tmp_path):
    images, masks = tmp_path / "train", tmp_path / "train_annotation"
    for d in (images, masks):
        d.mkdir()
    for name in ("a", "b"):
        (images / f"{name}.jpg").write_bytes(b"x")
    for name in ("a", "c", "d"):  # extra masks are expected: their images live on other hosts
        (masks / f"{name}.png").write_bytes(b"x")
    with pytest.raises(ClientError, match=r"1 image\(s\) in 'train' \(ShardedByS3Key\).*: train/b\.jpg\. Shard"):
        sharding.pair_host_shard(images, masks)
    (masks / "b.png").write_bytes(b"x")
    assert [s.name for s in sharding.pair_host_shard(images, masks)] == ["a", "b"]


def test_pipe_mode_is_refused_on_several_hosts(tmp_path):
    config = tmp_path / "input" / "config"
    config.mkdir(parents=True)
    (config / "inputdataconfig.json").write_text(
        json.dumps({"train": {"TrainingInputMode": "Pipe"}, "validation": {"TrainingInputMode": "Pipe"}})
    )
    with pytest.raises(ClientError, match="Pipe mode trains on a single instance"):
        resolve_inputs(
            Environment(tmp_path), parse({"num_classes": "3", "num_training_samples": "8"}), resources("algo-1")
        )


# ---------------------------------------------------------------------------------------------
# Roles' environment


def test_role_environment_carries_the_ps_lite_variables():
    spec = cluster_spec.ClusterSpec.from_resources(
        resources("algo-2", interface="eth1"),
        {
            cluster_spec.PS_PORT_ENV: "9100",
            cluster_spec.PEER_TIMEOUT_ENV: "30",
            cluster_spec.HOST_ADDRESSES_ENV: "algo-1=10.0.0.1",
        },
    )
    assert (spec.primary, spec.is_primary, spec.ps_port, spec.watchdog_port, spec.peer_timeout) == (
        "algo-1",
        False,
        9100,
        9101,
        30.0,
    )
    assert spec.address_of("algo-1", deadline=0) == "10.0.0.1"
    env = spec.role_environment("server", "10.0.0.1", {"PS_VERBOSE": "2", "DMLC_ROLE": "worker", "KEEP": "1"})
    assert {k: v for k, v in env.items() if k.startswith("DMLC_")} == {
        "DMLC_ROLE": "server",
        "DMLC_PS_ROOT_URI": "10.0.0.1",
        "DMLC_PS_ROOT_PORT": "9100",
        "DMLC_NUM_SERVER": "2",
        "DMLC_NUM_WORKER": "2",
        "DMLC_INTERFACE": "eth1",
    }
    assert "PS_VERBOSE" not in env and env["KEEP"] == "1" and env[cluster_spec.SUPERVISOR_PID_ENV] == str(os.getpid())
    with pytest.raises(ClientError, match="GLUONSEG_PEER_TIMEOUT"):
        cluster_spec.ClusterSpec.from_resources(resources("algo-1"), {cluster_spec.PEER_TIMEOUT_ENV: "soon"})
    with pytest.raises(ClientError, match="HOST=ADDRESS"):
        cluster_spec.parse_host_addresses("algo-1")


def test_exit_code_of_a_local_cluster():
    assert exit_code({"algo-1": 0, "algo-2": 0}) == 0
    assert exit_code({"algo-1": 1, "algo-2": 2}) == 1
    assert exit_code({"algo-1": 143, "algo-2": 2}) == 2
    assert exit_code({"algo-1": 143, "algo-2": 143}) == 143
    assert exit_code({"algo-1": -9, "algo-2": 0}) == 1


# ---------------------------------------------------------------------------------------------
# The watchdog network between the hosts' supervisors (threads on loopback)


def watchdogs(hosts, peer_timeout=30.0, join_timeout=20.0):
    port = free_port()
    out = {}
    for host in hosts:
        spec = cluster_spec.ClusterSpec(
            hosts=tuple(hosts),
            current_host=host,
            watchdog_port=port,
            peer_timeout=peer_timeout,
            join_timeout=join_timeout,
        )
        out[host] = watchdog.Watchdog(spec, "127.0.0.1")
    return out


def start_all(dogs):
    dogs["algo-1"].start()
    threads = []
    for host, dog in dogs.items():
        if host != "algo-1":
            dog.start()
        threads.append(threading.Thread(target=dog.wait_until_started))
        threads[-1].start()
    for t in threads:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in threads)


def failure_within(dog, seconds: float) -> watchdog.PeerFailure:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            dog.check(timeout=0.1)
        except watchdog.PeerFailure as exc:
            return exc
    raise AssertionError(f"no failure reported within {seconds} s")


@pytest.mark.timeout(60)
def test_a_reported_failure_reaches_every_host():
    dogs = watchdogs(("algo-1", "algo-2", "algo-3"))
    try:
        start_all(dogs)
        dogs["algo-2"].report_failure("ClientError: host algo-2: bad masks")
        for host in ("algo-1", "algo-3"):
            exc = failure_within(dogs[host], 10)
            assert exc.host == "algo-2" and exc.text == "ClientError: host algo-2: bad masks"
    finally:
        for dog in dogs.values():
            dog.close()


@pytest.mark.timeout(60)
def test_a_vanished_host_and_a_silent_host_are_failures_a_finished_one_is_not():
    dogs = watchdogs(("algo-1", "algo-2", "algo-3"))
    try:
        start_all(dogs)
        dogs["algo-3"].report_done(0, wait=0)
        time.sleep(0.3)
        dogs["algo-3"].close()  # finished, then gone: fine
        dogs["algo-2"].close()  # gone without finishing: its train process died
        for host in ("algo-1",):
            exc = failure_within(dogs[host], 10)
            assert exc.host == "algo-2" and "lost contact with host algo-2" in exc.text
    finally:
        for dog in dogs.values():
            dog.close()

    # A host that joined, then went silent (no heartbeats), is noticed after the peer timeout.
    dogs = watchdogs(("algo-1", "algo-2"), peer_timeout=1.5)
    import socket

    dogs["algo-1"].start()
    silent = socket.create_connection(("127.0.0.1", dogs["algo-1"].spec.watchdog_port))
    try:
        silent.sendall(b'{"type": "hello", "host": "algo-2"}\n')
        dogs["algo-1"].wait_until_started()
        start = time.monotonic()
        exc = failure_within(dogs["algo-1"], 10)
        assert exc.host == "algo-2" and "has not been heard from" in exc.text
        assert 0.5 < time.monotonic() - start < 6
    finally:
        silent.close()
        dogs["algo-1"].close()


@pytest.mark.timeout(60)
def test_a_host_that_never_joins_fails_the_job_after_the_join_timeout():
    dogs = watchdogs(("algo-1", "algo-2"), join_timeout=1.0)
    try:
        dogs["algo-1"].start()
        with pytest.raises(watchdog.PeerFailure, match="algo-2 did not start within 1 s"):
            dogs["algo-1"].wait_until_started()
    finally:
        dogs["algo-1"].close()


# ---------------------------------------------------------------------------------------------
# Real 2-host jobs through the local launcher

DIGEST = re.compile(r"parameter digest after epoch (\d+): ([0-9a-f]+)")
MIOU = re.compile(r"host=(algo-\d), epoch=(\d+), validation mIOU <score>=(\S+)")
LOSS = re.compile(r"host=(algo-\d), epoch=(\d+), train loss <loss>=(\S+)")
WORKER_PID = re.compile(r"started the ps-lite worker on algo-2 \(pid (\d+)\)")
KILL_BOUND = 60  # seconds from a killed worker to every host's `train` having exited


def launch(data: Path, model_dir: Path, hp: dict, log: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "GLUONSEG_SEED": "1", "OMP_NUM_THREADS": "1", cluster_spec.PEER_TIMEOUT_ENV: "30"}
    cmd = [sys.executable, "-m", "gluonseg.cli", "train", "--hosts", "2", "--data", str(data)]
    cmd += ["--model-dir", str(model_dir), *extra, *[f"{k}={v}" for k, v in hp.items()]]
    with open(log, "a") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)


def stop_group(proc: subprocess.Popen) -> None:
    """Kill the launcher's group; its hosts and their roles die with it (parent-death signal)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def host_logs(model_dir: Path) -> dict[str, str]:
    return {h: (model_dir / ".hosts" / h / "train.log").read_text() for h in HOSTS2}


def per_epoch(pattern: re.Pattern, text: str, host: str | None = None) -> dict[int, str]:
    found = {}
    for m in pattern.finditer(text):
        if pattern.groups == 2:
            found[int(m.group(1))] = m.group(2)
        elif m.group(1) == host and int(m.group(2)) not in found:  # the first line per epoch, not the summary
            found[int(m.group(2))] = m.group(3)
    return found


def assert_lockstep(logs: dict[str, str]) -> list[int]:
    """Both hosts logged the same parameters, mIOU and loss for the same epochs; returns those epochs."""
    for host in HOSTS2:  # they agreed by themselves: no worker needed the first host's parameters
        assert "parameter digest before training" in logs[host] and "differ from" not in logs[host]
    digests = {h: per_epoch(DIGEST, logs[h]) for h in HOSTS2}
    assert digests["algo-1"] and digests["algo-1"] == digests["algo-2"]
    assert len(set(digests["algo-1"].values())) == len(digests["algo-1"]), "the parameters did not change"
    mious = {h: per_epoch(MIOU, logs[h], h) for h in HOSTS2}
    assert mious["algo-1"] == mious["algo-2"] and set(mious["algo-1"]) == set(digests["algo-1"])
    losses = {h: per_epoch(LOSS, logs[h], h) for h in HOSTS2}
    assert losses["algo-1"] == losses["algo-2"]
    return sorted(digests["algo-1"])


@pytest.mark.timeout(420)
def test_two_hosts_train_in_lockstep_a_killed_worker_fails_the_job_and_a_rerun_resumes(tmp_path, generated_dataset):
    hp = {**TINY, "epochs": 3}
    model = tmp_path / "model"
    launcher_log = tmp_path / "launcher.log"

    # 1. Train until the first checkpoint, then kill host algo-2's worker: the whole job ends, quickly.
    proc = launch(generated_dataset, model, hp, launcher_log)
    try:
        deadline = time.monotonic() + 240
        while not (model / "checkpoints" / "latest.json").exists():
            assert proc.poll() is None, launcher_log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.1)
        pid = int(WORKER_PID.search(host_logs(model)["algo-2"]).group(1))
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        code = proc.wait(timeout=KILL_BOUND + 30)
        elapsed = time.monotonic() - killed_at
    finally:
        stop_group(proc)
    assert code == 1, launcher_log.read_text()[-3000:]
    assert elapsed < KILL_BOUND, elapsed
    first = host_logs(model)
    for failure in (model / "output" / "failure", model / ".hosts" / "algo-2" / "output" / "failure"):
        text = failure.read_text()
        assert text.startswith("AlgorithmError: host algo-2") and "worker process was killed by SIGKILL" in text
    assert assert_lockstep(first)[0] == 0
    done = json.loads((model / "checkpoints" / "latest.json").read_text())["epoch"] + 1
    assert 1 <= done < 3

    # 2. Rerun the same job: every worker resumes from algo-1's checkpoint and finishes in lockstep.
    proc = launch(generated_dataset, model, hp, launcher_log)
    try:
        code = proc.wait(timeout=300)
    finally:
        stop_group(proc)
    assert code == 0, launcher_log.read_text()[-3000:]
    second = {h: text[len(first[h]) :] for h, text in host_logs(model).items()}
    for host in HOSTS2:
        assert f"{done} epoch(s) done" in second[host], second[host][-3000:]
        assert f"resuming from checkpoint {'' if host == 'algo-1' else 'algo-1/'}" in second[host]
    assert assert_lockstep(second) == list(range(done, 3))
    assert not (model / "output" / "failure").exists()

    # The model is written once, by the first host, into the model folder; algo-2 writes no model or checkpoint.
    for name in ("hyperparams.json", "model_algo-1", "model_best.params", "model-symbol.json", "model-0000.params"):
        assert (model / name).stat().st_size > 0, name
    assert "model written to" in second["algo-1"] and "model written to" not in second["algo-2"]
    other = model / ".hosts" / "algo-2"
    assert not (other / "model").exists() and not (other / "checkpoints").exists()
    history = json.loads((model / "output" / "data" / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == [0, 1, 2]
    # TensorBoard: one host writes (both runs of it: the first and the resumed one), the other none
    assert len(list((model / "output" / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert not (other / "output" / "tensorboard").exists()


@pytest.mark.timeout(240)
def test_a_data_error_on_one_sharded_host_fails_every_host_with_its_name(tmp_path, generated_dataset):
    data = tmp_path / "data"
    shutil.copytree(generated_dataset, data)
    # The launcher shards image channels like S3: algo-2 gets files 1, 3, 5, ...; drop the mask of file 1.
    victim = sorted((data / "train").iterdir())[1]
    (data / "train_annotation" / f"{victim.stem}.png").unlink()
    model = tmp_path / "model"
    log = tmp_path / "launcher.log"
    proc = launch(data, model, {**TINY, "epochs": 1}, log, "--distribution", "ShardedByS3Key")
    try:
        code = proc.wait(timeout=180)
    finally:
        stop_group(proc)
    assert code == 2, log.read_text()[-3000:]
    for failure in (model / "output" / "failure", model / ".hosts" / "algo-2" / "output" / "failure"):
        text = failure.read_text()
        assert text.startswith("ClientError: host algo-2: 1 image(s) in 'train' (ShardedByS3Key)"), text
        assert victim.name in text
    assert not (model / "model_algo-1").exists()


def test_local_cluster_builds_one_tree_per_host_and_links_the_first_to_the_model_folder(tmp_path, generated_dataset):
    cluster = LocalCluster(3, generated_dataset, tmp_path / "model", {"num_classes": "4"}, environ={})
    cluster.prepare()
    for host in ("algo-1", "algo-2", "algo-3"):
        base = cluster.host_dir(host)
        config = json.loads((base / "input" / "config" / "resourceconfig.json").read_text())
        assert config == {"current_host": host, "hosts": ["algo-1", "algo-2", "algo-3"], "network_interface_name": "lo"}
        assert json.loads((base / "input" / "config" / "hyperparameters.json").read_text()) == {"num_classes": "4"}
        assert (base / "input" / "data" / "train").resolve() == generated_dataset.resolve() / "train"
    first = cluster.host_dir("algo-1")
    assert (first / "model").resolve() == (tmp_path / "model").resolve()
    assert (first / "checkpoints").resolve() == (tmp_path / "model" / "checkpoints").resolve()
    assert not (cluster.host_dir("algo-2") / "model").exists()
    env = cluster.environment("algo-2", 1234, 1235)
    assert env["SAGEMAKER_BASE_DIR"] == str(cluster.host_dir("algo-2"))
    assert env[cluster_spec.HOST_ADDRESSES_ENV] == "algo-1=127.0.0.1,algo-2=127.0.0.1,algo-3=127.0.0.1"
    assert (env[cluster_spec.PS_PORT_ENV], env[cluster_spec.WATCHDOG_PORT_ENV]) == ("1234", "1235")
