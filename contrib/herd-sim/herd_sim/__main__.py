"""``python -m herd_sim``: the ``herd-sim`` command."""

import sys

from herd_sim.cli import main

sys.exit(main())
