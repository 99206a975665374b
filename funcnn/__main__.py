"""``python -m funcnn``: the ``funcnn`` command (see :mod:`funcnn.cli`)."""

import sys

from funcnn.cli import main

sys.exit(main())
