"""Package gluonseg. Install with the pinned set: see the Makefile's `install` target."""

import importlib.util
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
PROTO_DIR = HERE / "gluonseg" / "codecs"


def compile_proto() -> None:
    """Compile record.proto to record_pb2.py (grpcio-tools is in requirements-dev.lock).

    Without grpcio-tools (the runtime set the images install) this is left to `make proto`, which
    compiles it with a throwaway copy of the same pins.
    """
    proto = PROTO_DIR / "record.proto"
    if not proto.exists() or importlib.util.find_spec("grpc_tools") is None:
        return
    subprocess.check_call(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", f"--python_out={PROTO_DIR}", str(proto)]
    )


class BuildWithProto(build_py):
    def run(self):
        compile_proto()
        super().run()


setup(
    name="gluonseg",
    version="0.1.0",
    description="The SageMaker built-in Semantic Segmentation algorithm, reimplemented on MXNet + GluonCV",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["gluonseg", "gluonseg.*", "serve", "serve.*"]),
    package_data={"gluonseg": ["*.json", "codecs/*.proto"], "serve": ["nginx.conf.template", "page.html"]},
    include_package_data=True,
    # Versions are pinned in requirements.lock (runtime) and installed from it (--no-deps); these are the
    # direct needs only, so `pip check` can tell when the lock misses something.
    install_requires=[
        "mxnet>=1.9.1,<2",
        "gluoncv==0.10.5.post0",
        "numpy>=1.23,<1.24",
        "pillow",
        "flask",
        "werkzeug",  # gluonseg.codecs negotiates Accept with it (flask brings it too)
        "gunicorn",
        "protobuf>=5.29.6,<6",
        "tqdm",
        "matplotlib",
        "tensorboardX>=2.6",  # training's TensorBoard event files
    ],
    # The ONNX export and serving backends (gluonseg.inference.onnx_*); requirements.lock has them. The GPU
    # serving image puts onnxruntime-gpu in place of onnxruntime, hence extras and not requirements.
    extras_require={
        "onnx": ["onnx>=1.14,<1.19", "onnxruntime>=1.16"],
        "openvino": ["openvino>=2024.0"],
    },
    entry_points={
        "console_scripts": [
            "train=gluonseg.train_entry:main",
            "serve=serve.entry:main",
            "gluonseg=gluonseg.cli:main",
        ]
    },
    cmdclass={"build_py": BuildWithProto},
)
