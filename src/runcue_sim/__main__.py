"""``python -m runcue_sim``: the same as the ``runcue-sim`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
