"""The teacher: a causal LM that reasons about relevance from several perspectives (MPCoT).

- :mod:`lrkd.teacher.model`     load_teacher(): a Hugging Face causal LM (hub id, local dir, packaged
                                GGUF converted once, or a tiny model from a config), LoRA optional
- :mod:`lrkd.teacher.prompts`   perspectives as data; the one prompt and completion format
- :mod:`lrkd.teacher.parse`     completion text -> (rationale, label) without ever raising
- :mod:`lrkd.teacher.runtime.http`  text generation: a local model, or an OpenAI-compatible HTTP server
- :mod:`lrkd.teacher.train.generate`  MPCoT generation with rejection sampling, sharded and resumable

The SFT, DPO and annotation steps live in the other modules of this package; each step is a stage
of ``train.py`` (``lrkd.stages.teacher_*``).
"""
