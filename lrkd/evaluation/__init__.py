"""Evaluation: the relevance metrics of training and reports (:mod:`lrkd.evaluation.metrics`), and
the quality cost of an int8 export (:mod:`lrkd.serve.quality`)."""
