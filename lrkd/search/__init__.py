"""Predictor-guided architecture search of the student (METHOD.md, the third paper): a prunable
student (lrkd.student.prune), measured latency (latency_table), a non-neural quality predictor that
drives an Optuna sampler (sampler), the sweeper's hook that ties them to a study and writes its
report (study, report), and a replay of samplers against a measured table (replay)."""
