"""``python -m skebrm.serving``: the same as ``skebrm-serve``."""

import sys

from skebrm.serving.cli import main

sys.exit(main())

__all__: list[str] = []
