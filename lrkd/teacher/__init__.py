"""The teacher: a causal LM that reasons about relevance from several perspectives (MPCoT), one
room per job. Each job is run by a stage of ``train.py`` (``lrkd.stages.teacher_*``).

- :mod:`lrkd.teacher.model`    load_teacher(): a Hugging Face causal LM (hub id, local dir, packaged
                               GGUF converted once, or a tiny model from a config), LoRA optional
- :mod:`lrkd.teacher.prompts`  perspectives as data; the one prompt and completion format
- :mod:`lrkd.teacher.parse`    completion text -> (rationale, label) without ever raising
- :mod:`lrkd.teacher.tokens`   the one answer-token check (grades after ``Label:``, answers after ``Answer:``)
- :mod:`lrkd.teacher.runtime`  running it: one base over a local HF model, an OpenAI-compatible server, llama.cpp
- :mod:`lrkd.teacher.train`    training it: DAPT corpus, MPCoT generation, SFT/DPO examples, the LightningModules
- :mod:`lrkd.teacher.reward`   rewarding it: reward dimensions, best/worst pairs, the learned reward model
- :mod:`lrkd.teacher.label`    labelling pairs: annotation, llama.cpp readings, calibration, evaluation

Imports run one way: model, prompts, parse, tokens <- runtime <- train <- label; reward reads prompts and parse.
"""
