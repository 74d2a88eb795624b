"""Serving the student: batch prediction on files (:mod:`lrkd.serve.predict`), ONNX export and
int8 quantization (:mod:`lrkd.serve.export`), and the Hugging Face ``save_pretrained`` form
(:mod:`lrkd.serve.hf`). Command lines: ``python -m lrkd.predict``, ``python -m lrkd.export``."""
