"""`python -m gluonseg.cli`: the same as the `gluonseg` console script."""

import sys

from gluonseg.cli import main

sys.exit(main())
