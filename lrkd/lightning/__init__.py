"""Lightning glue (layer 1): the only part of lrkd that knows Lightning's and DeepSpeed's internals.

- :mod:`lrkd.lightning.distributed`  ranks: ``${lrkd_ddp_strategy:}``, ``${lrkd_run_stamp:}``, Ranks, run_on_ranks
- :mod:`lrkd.lightning.compat`       the only reader of private Lightning names
- :mod:`lrkd.lightning.callbacks`    RNG-state checkpointing (exact resume)
- :mod:`lrkd.lightning.optim`        optimizer and schedule from the config partials; parameter groups
- :mod:`lrkd.lightning.deepspeed`    a DeepSpeed ZeRO checkpoint -> one fp32 ``.ckpt`` (``lrkd zero-to-fp32``)

Nothing is imported here: ``import lrkd`` reads :mod:`lrkd.lightning.distributed` (its module level
imports no torch and no Lightning), and serving must not load Lightning.
"""
