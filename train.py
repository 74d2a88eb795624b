"""lrkd's one entry point: ``python train.py [stage=student] [group=option ...] [-m for a sweep]``
(the same as ``lrkd train ...``).

Composes ``conf/train.yaml`` with Hydra, runs the selected stage, and returns the metric that
``hparams_search`` optimises (``optimized_metric``): see :mod:`lrkd.train`.
"""
from lrkd.train import main

if __name__ == "__main__":
    main()
