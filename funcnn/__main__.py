"""``python -m funcnn``: the ``funcnn`` command (see :mod:`funcnn.cli`).

Importing this module runs nothing: only ``python -m funcnn`` (``__name__ == "__main__"``)
starts the command line.
"""

import sys

from funcnn.cli import main

if __name__ == "__main__":
    sys.exit(main())
