"""``python -m partkd.cli``: the ``partkd`` command."""

import sys

from partkd.cli import main

sys.exit(main())
