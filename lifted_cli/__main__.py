"""``python -m lifted_cli <command> ...``: the same as the ``lifted`` console script."""

import sys

from .cli import main

sys.exit(main())
