"""``python -m xentstream`` is the ``xentstream`` command."""

import sys

from xentstream.cli import main

sys.exit(main())
