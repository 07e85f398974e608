"""``python -m tensorshm``: see tensorshm._cli."""

import sys

from ._cli import main

sys.exit(main())
