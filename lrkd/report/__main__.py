"""``python -m lrkd.report DIR ...``: the same as ``lrkd report`` (:func:`lrkd.report.compare.main`)."""
import sys

from lrkd.report.compare import main

sys.exit(main(prog="python -m lrkd.report"))
