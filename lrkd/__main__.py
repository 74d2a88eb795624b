"""``python -m lrkd <command>``: the same as the ``lrkd`` console script (lrkd.cli)."""
import sys

from lrkd.cli import main

sys.exit(main())
