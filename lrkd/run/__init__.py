"""Running lrkd's jobs (layer 1: imports nothing of lrkd above it):

- :mod:`lrkd.run.resolvers`  the OmegaConf resolvers of ``conf/`` (``${lrkd_root:}`` ...), registered on ``import lrkd``
- :mod:`lrkd.run.jobs`       the failure-tolerant job of a multirun (``error.json``) and the one stage wrapper
- :mod:`lrkd.run.overrides`  Hydra override lines and a sweep's declared keys
- :mod:`lrkd.run.wandb_run`  a job's W&B run: its identity (name, group, tags), test tables, finishing it

Nothing is imported here: ``import lrkd`` reads the resolvers, and must stay light.
"""
