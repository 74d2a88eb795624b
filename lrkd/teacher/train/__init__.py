"""Training the teacher: the DAPT corpus (:mod:`~lrkd.teacher.train.dapt`), MPCoT generation
(:mod:`~lrkd.teacher.train.generate`), SFT examples and DPO pairs (:mod:`~lrkd.teacher.train.examples`)
and the LightningModules (:mod:`~lrkd.teacher.train.module`)."""
