"""Exactly what the `train` console script does (for `python train.py` inside a container)."""

import sys

from gluonseg.train_entry import main

if __name__ == "__main__":
    sys.exit(main())
