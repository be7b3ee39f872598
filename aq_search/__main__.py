"""``python -m aq_search``: the same as the ``aq-search`` command."""

import sys

from ._cli import main

sys.exit(main())
