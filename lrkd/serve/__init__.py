"""Serving the student, without Lightning: the serving config and ONNX sidecar
(:mod:`lrkd.serve.config`), eager and ONNX Runtime scorers and model loading
(:mod:`lrkd.serve.scorers`), batch prediction on files (:mod:`lrkd.serve.predict`), ONNX export and
int8 quantization (:mod:`lrkd.serve.export`), and the Hugging Face ``save_pretrained`` form
(:mod:`lrkd.serve.hf`). Imports run config <- scorers <- predict, export; hf <- scorers.
Command lines: ``lrkd predict``, ``lrkd export`` (lrkd.cli)."""
