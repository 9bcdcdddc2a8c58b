"""``python -m app.cli``: the ``hetserve`` command."""

import sys

from app.cli import main

sys.exit(main())
