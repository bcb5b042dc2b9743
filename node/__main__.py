"""`python -m qudag.node` is the same as `qudag-node`."""

import sys

from qudag.node.cli import main

sys.exit(main())
