"""lrkd's Optuna sweeper for Hydra, on current Optuna (>= 3; ``hydra-optuna-sweeper`` pins optuna < 3).

Select it with ``override /hydra/sweeper: lrkd_optuna`` (see ``conf/hparams_search/``). The search
space uses Hydra's sweep syntax, as in ``hydra-optuna-sweeper``::

    hydra.sweeper.params:
      optimizer.lr: tag(log, interval(1e-5, 1e-3))   # float, log scale
      loss.terms.kd.temperature: interval(1.0, 8.0)  # float, uniform
      model.layers: range(2, 8, 2)                   # int 2, 4, 6 (Hydra's range excludes the stop)
      extractor: mlp,poly,gat                        # categorical

Each trial is one job of the launcher; the job's return value (``train.py`` returns
``cfg.optimized_metric``) is told to the study; a failed job, or one that returns None or a
non-finite value, is told as a failed trial and the search goes on.
"""
