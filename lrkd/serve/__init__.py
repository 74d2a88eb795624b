"""Serving the student, without Lightning: the serving config and ONNX sidecar
(:mod:`lrkd.serve.config`), eager and ONNX Runtime scorers and model loading
(:mod:`lrkd.serve.scorers`), batch prediction on files (:mod:`lrkd.serve.predict`), ONNX export and
int8 quantization (:mod:`lrkd.serve.export`), the Hugging Face ``save_pretrained`` form
(:mod:`lrkd.serve.hf`), and the HTTP server: :mod:`lrkd.serve.server` (uvicorn) runs
:mod:`lrkd.serve.app` (the endpoints; :mod:`lrkd.serve.schemas`, :mod:`lrkd.serve.metrics`) on
:mod:`lrkd.serve.service` (the served model, pair encoding, scores) and :mod:`lrkd.serve.batching`
(the dynamic batcher). Imports run config <- scorers <- predict, export; hf <- scorers;
batching <- metrics <- app; service <- app <- server.
Command lines: ``lrkd predict``, ``lrkd export``, ``lrkd serve`` (lrkd.cli)."""
