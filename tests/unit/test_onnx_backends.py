"""The ONNX Runtime and OpenVINO networks on a tiny graph: the Network contract, threads and pinning."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from gluonseg.errors import ClientError
from gluonseg.inference.onnx_backends import OnnxRuntimeNetwork, OpenVinoNetwork, check_backend_precision
from gluonseg.util import available_cpus


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """logits = a 3x3 convolution (3 -> 4 channels) of `data`, any size."""
    weight = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["data", "w"], ["logits"], kernel_shape=[3, 3], pads=[1] * 4)],
        "tiny",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4, "height", "width"])],
        [numpy_helper.from_array(weight, "w")],
    )
    path = tmp_path_factory.mktemp("tiny") / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_both_networks_answer_the_same_logits_for_any_size(tiny_model):
    ours = OnnxRuntimeNetwork(tiny_model, num_threads=1)
    theirs = OpenVinoNetwork(tiny_model, "fp32", num_threads=1)
    assert (ours.backend, ours.precision) == ("onnxruntime", "fp32")
    assert (theirs.backend, theirs.precision) == ("openvino", "fp32")
    assert ours.provider == "CPUExecutionProvider"  # no GPU here
    for size in [(8, 8), (16, 24)]:
        data = np.random.default_rng(size[1]).standard_normal((3, *size)).astype(np.float32)
        a, b = ours.logits(data), theirs.logits(data)
        assert a.shape == b.shape == (4, *size) and a.dtype == b.dtype == np.float32
        np.testing.assert_allclose(a, b, atol=1e-4)
        first = theirs.logits(data)
        theirs.logits(data + 1)
        assert np.array_equal(first, b)  # the caller owns its array: the next call does not overwrite it


def test_openvino_pins_threads_only_when_the_process_has_every_core(tiny_model):
    # Two 1-thread server workers pinned from the first core would share one (half the requests/s).
    one = OpenVinoNetwork(tiny_model, "fp32", num_threads=1)
    assert one._compiled.get_property("ENABLE_CPU_PINNING") is (available_cpus() == 1)
    every = OpenVinoNetwork(tiny_model, "fp32", num_threads=available_cpus())
    assert every._compiled.get_property("ENABLE_CPU_PINNING") is True


def test_threads_follow_omp_num_threads(tiny_model, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert OpenVinoNetwork(tiny_model, "fp32")._compiled.get_property("INFERENCE_NUM_THREADS") == 1


def test_precisions_a_backend_cannot_run_are_client_errors():
    with pytest.raises(ClientError, match="backend onnxruntime runs precision fp32, int8, not bf16"):
        check_backend_precision("onnxruntime", "bf16")
    check_backend_precision("openvino", "int8")  # from the model folder's model-int8.onnx


def test_onnx_runtime_puts_cuda_first_when_it_sees_a_gpu_and_logs_the_provider(tiny_model, monkeypatch, caplog):
    # No GPU here: ONNX Runtime's provider list is faked to say what onnxruntime-gpu on a GPU machine says,
    # and the session records what it is asked for. The CUDA run itself needs a GPU (not lent to this project).
    import onnxruntime as ort

    asked = []

    class Session:
        def __init__(self, path, options, providers):
            asked.append(providers)

        def get_providers(self):
            return asked[-1]

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", Session)
    caplog.set_level(logging.INFO, logger="gluonseg")
    network = OnnxRuntimeNetwork(tiny_model)
    assert asked[-1] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert network.provider == "CUDAExecutionProvider"
    assert "on CUDAExecutionProvider" in caplog.text
    OnnxRuntimeNetwork(tiny_model, prefer_gpu=False)
    assert asked[-1] == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert OnnxRuntimeNetwork(tiny_model).provider == "CPUExecutionProvider"


def test_auto_candidates_follow_the_cpu_fastest_first(tmp_path):
    from types import SimpleNamespace

    from gluonseg.inference.backend_choice import candidates
    from gluonseg.inference.precision import INT8_SYMBOL

    artifact = SimpleNamespace(folder=tmp_path)
    plain = [("mxnet", "fp32"), ("openvino", "fp32"), ("onnxruntime", "fp32")]
    assert candidates(artifact, {"avx2", "avx512f"}) == plain
    amx = {"avx512_bf16", "amx_bf16"}
    assert candidates(artifact, amx) == [("mxnet", "fp32"), ("openvino", "bf16"), *plain[1:]]
    # MXNet BF16 lost to OpenVINO BF16 on every BF16 CPU measured, AVX-512 BF16 without AMX included
    assert candidates(artifact, {"avx512_bf16", "avx512_vnni"}) == candidates(artifact, amx)
    (tmp_path / INT8_SYMBOL).write_text("{}")  # `gluonseg quantize` ran: its INT8 files are tried
    assert ("mxnet", "int8") in candidates(artifact, amx)


def test_a_batch_of_windows_gives_each_windows_logits(tiny_model):
    # The slide scale sends several windows in one call (gluonseg.inference.windows): a batch must answer
    # what one call per window answers, in order.
    rng = np.random.default_rng(3)
    batch = rng.standard_normal((3, 3, 16, 24)).astype(np.float32)
    for network in (OnnxRuntimeNetwork(tiny_model), OpenVinoNetwork(tiny_model)):
        together = network.logits(batch)
        assert together.shape == (3, 4, 16, 24)
        for index in range(3):
            np.testing.assert_allclose(together[index], network.logits(batch[index]), rtol=1e-5, atol=1e-5)
        assert not np.allclose(together[0], together[1])  # the windows are told apart
