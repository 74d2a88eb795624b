"""Rewarding the teacher's completions: reward dimensions with TRL's signature
(:mod:`~lrkd.teacher.reward.dimensions`), candidates, combination and best/worst pairs
(:mod:`~lrkd.teacher.reward.pairs`), and the learned reward model (:mod:`~lrkd.teacher.reward.model`)."""
