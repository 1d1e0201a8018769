"""Request and response codecs of the scoring server.

- `content_types`: media type constants, Content-Type checks and Accept negotiation.
- `decode`: request bodies to RGB pixels; recordio-protobuf responses back to probabilities.
- `encode`: masks to indexed PNGs, probabilities to recordio-protobuf.
- `record.proto`: the SageMaker `Record` message, compiled by `make proto` into `record_pb2.py`
  (git-ignored); load it with `load_record_pb2()` for a clear error when it was not compiled.
"""

from __future__ import annotations

from types import ModuleType


def load_record_pb2() -> ModuleType:
    """The compiled `record_pb2` module; ImportError saying to run `make proto` when it is missing."""
    try:
        from gluonseg.codecs import record_pb2
    except ImportError as exc:
        raise ImportError(
            f"cannot import gluonseg.codecs.record_pb2 ({exc}); it is generated from gluonseg/codecs/record.proto: "
            "run `make proto`"
        ) from exc
    return record_pb2
