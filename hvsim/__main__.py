"""``python -m hvsim``: the same as the ``hvsim`` command."""

import sys

from .cli import main

sys.exit(main())
