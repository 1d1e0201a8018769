"""Inside each worker of a multi-host job: the KVStore and the collective steps of the training loop.

`Cluster` wraps the dist KVStore for what gluon.Trainer does not do: agreeing on the number of iterations
per epoch and on stop requests, averaging BatchNorm running statistics, summing confusion matrices, and
broadcasting the first host's checkpoint. Gradients go through gluon.Trainer with `update_on_kvstore=False`:
servers only sum gradients and every worker runs the same optimizer on the same sums, so the learning-rate
schedule counts global iterations on each worker and the parameters stay identical: every epoch the workers
compare a digest of them, and one that differs takes the first host's.

The ps-lite servers store and sum float32 only, so integers travel as 16-bit limbs (exact for up to 256
hosts) and byte strings as float32 values below 2**24 (gluonseg.training.distributed.packing); see
`allreduce_int` and `broadcast_bytes`. MXNet is imported inside the functions, so the module itself loads
without it.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from gluonseg.data.sharding import host_index
from gluonseg.environment import ResourceConfig
from gluonseg.errors import AlgorithmError, ClientError
from gluonseg.training.checkpoint import REQUIRED, find_checkpoint, load_checkpoint, load_trainer_states
from gluonseg.training.distributed.packing import bytes_to_floats, floats_to_bytes, int_to_limbs, limbs_to_int
from gluonseg.training.distributed.spec import is_worker_process
from gluonseg.training.stopping import StopRequest

log = logging.getLogger("gluonseg.distributed")

# ps-lite picks a server with (key * 9973) % num_servers in a C int, so keys must stay below
# 2**31 / 9973 (~215,000) or the product overflows; gluon.Trainer uses 0..num_params-1.
RESERVED_KEY_BASE = 200_000
RESERVED_KEY_LIMIT = 215_000


class AgreedStop(StopRequest):
    """A SIGTERM stop that all workers agree on: the signal sets a local flag, and `requested` only turns
    true once a vote (`Cluster.lockstep`, every batch) found some worker's flag set, so every worker stops
    at the same batch and none is left waiting in a collective step."""

    logger = log
    message = "SIGTERM received: all workers stop at the next batch and save a checkpoint"

    def __init__(self) -> None:
        super().__init__()
        self.local = False

    def on_signal(self) -> None:
        self.local = True


class Cluster:
    """This worker's view of the job: the dist KVStore, its rank, and the collective steps.

    Every method that talks to the KVStore is collective: all workers must call them in the same order.
    """

    def __init__(self, kvstore: Any, resources: ResourceConfig):
        self.kvstore = kvstore
        self.resources = resources
        self.host = resources.current_host
        self.index = host_index(resources)
        self.num_workers = len(resources.hosts)
        self.rank = kvstore.rank
        self._keys: dict[str, tuple[int, tuple[int, ...]]] = {}
        self._next_key = RESERVED_KEY_BASE
        self._blobs = 0
        self._primary_rank: int | None = None

    @classmethod
    def connect(cls, resources: ResourceConfig, num_gpus: int) -> Cluster:
        if not is_worker_process():
            raise AlgorithmError(
                "a multi-host job must be started with `train` on every host, which starts the parameter-server "
                "roles; this process is not one of its workers"
            )
        import mxnet as mx

        kind = "dist_device_sync" if num_gpus > 1 else "dist_sync"
        start = time.perf_counter()
        kvstore = mx.kv.create(kind)
        if kvstore.num_workers != len(resources.hosts):
            raise AlgorithmError(
                f"the parameter server counts {kvstore.num_workers} workers but resourceconfig.json lists "
                f"{len(resources.hosts)} hosts"
            )
        cluster = cls(kvstore, resources)
        log.info(
            "joined the %s KVStore in %.1f s: host %s is worker %d of %d (ps-lite rank %d)%s",
            kind,
            time.perf_counter() - start,
            cluster.host,
            cluster.index,
            cluster.num_workers,
            cluster.rank,
            "; it writes the model and checkpoints" if cluster.is_primary else "",
        )
        return cluster

    @property
    def is_primary(self) -> bool:
        return self.index == 0

    def stop_request(self) -> AgreedStop:
        return AgreedStop()

    def trainer_kvstore(self, ctxs: Any) -> dict[str, Any]:
        """gluon.Trainer's KVStore arguments: servers only sum gradients and each worker runs the optimizer
        and its schedule itself."""
        return {"kvstore": self.kvstore, "update_on_kvstore": False}

    # -- primitives
    def _key(self, name: str, shape: tuple[int, ...], initial: Any = None) -> int:
        """A reserved key for `name`, initialised (a collective barrier) on first use: to zeros, or to the
        `initial` array of ps-lite's rank-0 worker (the others' are ignored)."""
        import mxnet as mx

        if name in self._keys:
            key, known = self._keys[name]
            if known != shape:
                raise AlgorithmError(f"internal: KVStore slot {name} changed shape from {known} to {shape}")
            return key
        key = self._next_key
        if key >= RESERVED_KEY_LIMIT:
            raise AlgorithmError("internal: out of reserved KVStore keys")
        self._next_key += 1
        self.kvstore.init(key, mx.nd.zeros(shape) if initial is None else mx.nd.array(initial))
        self._keys[name] = (key, shape)
        return key

    def allreduce(self, name: str, values: Any) -> Any:
        """Sum a float32 array over all workers (every worker gets the same result)."""
        import mxnet as mx
        import numpy as np

        values = np.ascontiguousarray(values, dtype=np.float32)
        key = self._key(name, values.shape)
        out = mx.nd.zeros(values.shape)
        self.kvstore.pushpull(key, mx.nd.array(values), out=out)
        result = out.asnumpy()
        return result

    def allreduce_int(self, name: str, values: Any) -> Any:
        """Exact sum of non-negative int64 values over all workers."""
        import numpy as np

        values = np.asarray(values, dtype=np.int64)
        summed = self.allreduce(name, int_to_limbs(values))
        return limbs_to_int(summed).reshape(values.shape)

    def gather_int(self, name: str, value: int) -> list[int]:
        """Every worker's value, in host order."""
        import numpy as np

        one_hot = np.zeros(self.num_workers, dtype=np.int64)
        one_hot[self.index] = value
        return [int(v) for v in self.allreduce_int(name, one_hot)]

    def any_true(self, name: str, flag: bool) -> bool:
        import numpy as np

        return bool(self.allreduce(name, np.array([1.0 if flag else 0.0]))[0] > 0)

    @property
    def primary_rank(self) -> int:
        """ps-lite's rank of the first host's worker (ps-lite numbers workers in its own order)."""
        if self._primary_rank is None:
            self._primary_rank = self.gather_int("ps-ranks", self.rank)[0]
        return self._primary_rank

    def broadcast_bytes(self, data: bytes | None) -> bytes:
        """The first host's bytes, on every worker (the others pass None)."""
        import mxnet as mx
        import numpy as np

        mine = data if self.is_primary and data is not None else b""
        self._blobs += 1
        length = self.gather_int(f"blob-length-{self._blobs}", len(mine))[0]
        if length == 0:
            return b""
        size = -(-length // 3)
        values = bytes_to_floats(mine) if self.is_primary else np.zeros(size, dtype=np.float32)
        if self.primary_rank != 0:  # the others add zeros to the first host's values
            return floats_to_bytes(self.allreduce(f"blob-{self._blobs}", values), length)
        # The KVStore takes a key's initial value from rank 0 alone: one upload, then everyone downloads.
        key = self._key(f"blob-{self._blobs}", values.shape, initial=values)
        out = mx.nd.zeros(values.shape)
        self.kvstore.pull(key, out=out)
        result = out.asnumpy()
        return floats_to_bytes(result, length)

    # -- training-loop steps
    def agree_iterations(self, local_samples: int, batch: int) -> int:
        """Iterations per epoch for every worker: enough for the largest shard (smaller ones cycle), so
        each worker makes the same number of synchronous steps and the schedule counts global steps."""
        counts = self.gather_int("train-samples", local_samples)
        empty = [h for h, c in zip(self.resources.hosts, counts) if c == 0]
        if empty:
            raise ClientError(
                f"host(s) {', '.join(empty)} hold no training images; every host needs at least one "
                "(with ShardedByS3Key, use at least as many files as instances)"
            )
        iters = max(-(-c // batch) for c in counts)
        log.info(
            "training images per host: %s; %d iteration(s) per epoch of %d images per host (%d per iteration "
            "over all hosts)",
            dict(zip(self.resources.hosts, counts)),
            iters,
            batch,
            batch * self.num_workers,
        )
        return iters

    def lockstep(self, batches: Iterable, steps: int, stop: AgreedStop) -> Iterator:
        """Exactly `steps` batches from `batches` (iterated again if it runs out), voting on a stop request
        before each: if any worker was asked to stop, every worker's `stop.requested` turns true together."""
        produced = 0
        while produced < steps:
            empty = True
            for batch in batches:
                empty = False
                stop.requested = self.any_true("stop-vote", stop.local)
                yield batch
                produced += 1
                if produced >= steps or stop.requested:
                    return
            if empty:
                raise AlgorithmError(f"host {self.host}: the training data loader produced no batch")

    def start(self, net: Any, trainer: Any, ctxs: Any, input_shape: tuple[int, ...]) -> None:
        """Give every worker the same parameters before the first gradient is pushed, and check them.

        gluon.Trainer does it inside its first step(): rank 0 sets each KVStore slot to its values and the
        others pull them. But those pulls are queued beside that step's gradient pushes, and a server that
        has every push sums the gradients into the same slot: on a busy machine a pull was answered with the
        gradient sum, and that worker trained a model of its own from then on. So: give deferred parameters
        their shapes and values by shape inference (a forward pass would either move the BatchNorm statistics
        or, in inference mode, leave the weights in oneDNN's layout, which the KVStore cannot send), initialise
        the trainer's KVStore slots now, and wait for every pull before training starts."""
        import mxnet as mx

        params = list(net.collect_params().values())
        if any(p._deferred_init for p in params):  # private names, but MXNet 1.9 is final
            net.infer_shape(mx.nd.zeros(input_shape, ctx=ctxs[0]))
            for p in params:
                p._finish_deferred_init()
        if not trainer._kv_initialized:  # load_states() may have done it
            trainer._init_kvstore()
        if trainer._params_to_init:
            trainer._init_params()
        mx.nd.waitall()
        self.agree_parameters(net, trainer, ctxs, None)

    def finish_epoch(self, net: Any, trainer: Any, ctxs: Any, epoch: int, loss: float) -> float:
        """After an epoch's steps: average the BatchNorm running statistics (not trained, so not summed by
        the trainer), check that every worker holds the same parameters, and return the mean training loss
        over the workers."""
        self.average_running_stats(net)
        self.agree_parameters(net, trainer, ctxs, epoch)
        import numpy as np

        return float(self.allreduce("train-loss", np.array([loss]))[0] / self.num_workers)

    def agree_parameters(self, net: Any, trainer: Any, ctxs: Any, epoch: int | None) -> bool:
        """Compare every worker's parameter digest with the first host's. The workers apply the same
        optimizer to the same gradient sums, so they should agree; should one not (a rare float difference
        on one host was seen once and never reproduced), it must not train on in a model of its own: every
        worker takes the first host's weights and optimizer state, with a warning. Returns True if they
        already agreed."""
        when = "before training" if epoch is None else f"after epoch {epoch}"
        mine = parameter_digest(net)
        digests = self.gather_digests("parameter-digest", mine)
        if all(d == digests[0] for d in digests):
            log.info("parameter digest %s: %s", when, mine)
            return True
        hosts = self.resources.hosts
        differing = {h: d for h, d in zip(hosts, digests) if d != digests[0]}
        log.warning(
            "%s the parameters of %s differ from %s's (digest %s): every worker continues from "
            "%s's weights and optimizer state",
            when,
            ", ".join(f"{h} (digest {d})" for h, d in differing.items()),
            hosts[0],
            digests[0],
            hosts[0],
        )
        self.share_primary_state(net, trainer, ctxs)
        after = parameter_digest(net)
        if after != digests[0]:
            raise AlgorithmError(
                f"host {self.host}: the parameters still differ from {hosts[0]}'s after loading its weights"
            )
        log.info("parameter digest %s: %s (%s's)", when, after, hosts[0])
        return False

    def gather_digests(self, name: str, digest: str) -> list[str]:
        """Every worker's hex digest, in host order (as 16-bit pieces: integers travel exactly)."""
        import numpy as np

        pieces = len(digest) // 4
        table = np.zeros((self.num_workers, pieces), dtype=np.int64)
        table[self.index] = [int(digest[i * 4 : i * 4 + 4], 16) for i in range(pieces)]
        gathered = self.allreduce_int(name, table)
        return ["".join(f"{int(v):04x}" for v in row) for row in gathered]

    def share_primary_state(self, net: Any, trainer: Any, ctxs: Any) -> None:
        """Load the first host's current weights and optimizer state on every worker."""
        with tempfile.TemporaryDirectory(prefix="gluonseg-share-") as tmp:
            weights, states = Path(tmp) / "weights.params", Path(tmp) / "trainer.states"
            if self.is_primary:
                net.save_parameters(str(weights))
                trainer.save_states(str(states))
            weights_data = self.broadcast_bytes(weights.read_bytes() if self.is_primary else None)
            states_data = self.broadcast_bytes(states.read_bytes() if self.is_primary else None)
            if not self.is_primary:
                weights.write_bytes(weights_data)
                states.write_bytes(states_data)
                net.load_parameters(str(weights), ctx=ctxs)
                load_trainer_states(trainer, states)

    def average_running_stats(self, net: Any) -> None:
        import mxnet as mx

        params = [(name, p) for name, p in sorted(net.collect_params().items()) if p.grad_req == "null"]
        if not params:
            return
        keys, outs, values = [], [], []
        for name, p in params:
            value = p.list_data()[0]
            keys.append(self._key(f"aux:{name}", tuple(value.shape)))
            values.append(value.astype("float32"))
            outs.append(mx.nd.zeros(value.shape))
        self.kvstore.pushpull(keys, values, out=outs)
        for (_, p), out in zip(params, outs):
            p.set_data((out / self.num_workers).astype(p.dtype))
        mx.nd.waitall()

    def sum_confusion(self, cm: Any) -> Any:
        """The confusion matrix over every worker's validation share (exact integer sums)."""
        from gluonseg.metrics import ConfusionMatrix

        total = ConfusionMatrix(cm.num_classes, cm.ignore_index)
        total.matrix[:] = self.allreduce_int("confusion", cm.matrix)
        return total

    def sum_counts(self, name: str, values: Any) -> Any:
        """Non-negative integer counts (e.g. the training masks' class pixels) summed over every worker."""
        return self.allreduce_int(name, values)

    def resume(self, ckpt_dir: Path, net: Any, trainer: Any, ctxs: Any) -> tuple[Path | None, dict[str, Any] | None]:
        """Load the first host's newest checkpoint on every worker (found there, sent through the KVStore),
        so all workers resume from the same epoch, weights and optimizer state. Returns (folder, state)."""
        found = find_checkpoint(ckpt_dir) if self.is_primary else None
        name = self.broadcast_bytes(found.name.encode() if found is not None else None).decode()
        if not name:
            return None, None
        start = time.perf_counter()
        blobs = {}
        for filename in REQUIRED:  # the best weights stay with the first host, which writes the model
            data = (found / filename).read_bytes() if self.is_primary else None
            blobs[filename] = self.broadcast_bytes(data)
        log.info(
            "checkpoint %s of %s (%.0f MB) shared with every worker in %.1f s",
            name,
            self.resources.hosts[0],
            sum(len(b) for b in blobs.values()) / 1e6,
            time.perf_counter() - start,
        )
        if self.is_primary:
            return found, load_checkpoint(found, net, trainer, ctxs)
        with tempfile.TemporaryDirectory(prefix="gluonseg-ckpt-") as tmp:
            folder = Path(tmp) / name
            folder.mkdir()
            for filename, data in blobs.items():
                (folder / filename).write_bytes(data)
            saved = load_checkpoint(folder, net, trainer, ctxs)
        return Path(self.resources.hosts[0]) / name, saved  # for the log: the first host's folder

    def close(self) -> None:
        """Release the KVStore now, whoever still holds it: its destructor waits for every worker (so the
        first host has written the model), and the first worker tells the servers and scheduler to stop."""
        from mxnet.base import _LIB, check_call

        kvstore, self.kvstore = self.kvstore, None
        if kvstore is not None:
            check_call(_LIB.MXKVStoreFree(kvstore.handle))
            kvstore.handle = None  # a later __del__ frees NULL, which is a no-op


def parameter_digest(net: Any) -> str:
    """sha256 over every parameter's structural name (as in saved .params files, free of the per-process
    block counters) and values (first device's copy), sorted by name."""
    digest = hashlib.sha256()
    for name, p in sorted(net._collect_params_with_prefix().items()):
        digest.update(name.encode())
        digest.update(p.list_data()[0].asnumpy().tobytes())
    return digest.hexdigest()[:32]
