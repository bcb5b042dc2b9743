"""`python -m qudag.simulations STUDY ...`: the same as `qudag-node simulate STUDY ...`."""

import sys

from qudag.node.cli import main

sys.exit(main(["simulate", *sys.argv[1:]]))
