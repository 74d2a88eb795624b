"""Evaluation (layer 2; it imports nothing of lrkd but the vocabulary, :mod:`lrkd.schema`):

- :mod:`lrkd.evaluation.confusion`  metrics of hard grades from their confusion matrix: the one QWK
                                    and the one macro-F1 (numpy)
- :mod:`lrkd.evaluation.metrics`    RelevanceMetrics (torchmetrics, DDP-reduced): accuracy, F1, QWK,
                                    AUC, nDCG, RMSE; decision_metrics, PredictionStore
- :mod:`lrkd.evaluation.decision`   decision rules: argmax, thresholds on the expected score fitted on val

Nothing is imported here: serving reads the decision rules without torchmetrics.
"""
