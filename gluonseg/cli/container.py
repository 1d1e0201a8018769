"""The containers' entry point: `docker run IMAGE train` or `docker run IMAGE serve`.

An exec-form ENTRYPOINT runs this with SageMaker's argument, so the process gets SIGTERM directly
(no shell in between) and both console scripts share one image layout.
"""

from __future__ import annotations

import sys

USAGE = "usage: docker run IMAGE train|serve  (SageMaker passes the argument)"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else ""
    if command == "train":
        from gluonseg.train_entry import main as train_main

        return train_main()
    if command == "serve":
        from serve.entry import main as serve_main

        return serve_main()
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
