"""`python -m mlrail.cli <command>`: the same as the `mlrail` console script."""

import sys

from . import main

sys.exit(main())
