"""Labelling pairs with the teacher: the annotation artefact (:mod:`~lrkd.teacher.label.annotate`),
llama.cpp readings of many pairs (:mod:`~lrkd.teacher.label.score_pool`), their calibration
(:mod:`~lrkd.teacher.label.calibration`) and the teacher evaluated as a classifier
(:mod:`~lrkd.teacher.label.evaluate`)."""
