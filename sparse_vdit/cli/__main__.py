"""``python -m sparse_vdit.cli``: the ``sparse-vdit`` command."""

import sys

from sparse_vdit.cli import main

sys.exit(main())
