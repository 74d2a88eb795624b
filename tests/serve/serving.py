"""Helpers for the tests of ``lrkd serve``: a tiny served student (ONNX, save_pretrained form,
checkpoint) with text fields and a tuned decision rule, and the server as a real process on a
free loopback port."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.serve import ROOT, tiny_student

TEXT_FIELDS = ("brand", "description")
# a fitted threshold rule on expected relevance (values 1, 0.5, 0): grades differ from argmax's
DECISION = {"kind": "thresholds", "score": "expected_relevance", "metric": "qwk",
            "score_values": [1.0, 0.5, 0.0], "thresholds": [0.45, 0.52]}
PAIRS = [  # (query, title, brand, description)
    ("usb charger", "Anker 20W USB-C wall charger", "Anker", "fast charging"),
    ("usb charger", "HP Pavilion dv7 17 inch", "HP", "Notebook, silver"),
    ("usb charger", "Belkin USB-A cable 1 m", "Belkin", None),
    ("usb charger", "LG 27UL850 27 inch 4K monitor", "LG", "IPS panel " * 40),
    ("usb charger", "Samsung 25W charger", "Samsung", "USB-C PD"),
]


def make_served(tmp: Path, seed: int = 7) -> dict:
    """{module, config, onnx, hf}: a tiny student (mlp extractor) exported to ONNX and saved in
    save_pretrained form, both with TEXT_FIELDS and DECISION in their serving config."""
    from lrkd.serve.config import ServingConfig
    from lrkd.serve.export import export_onnx
    from lrkd.serve.hf import save_student_pretrained

    module = tiny_student("mlp", seed=seed)
    config = ServingConfig.from_hparams(module.hparams).replace(text_fields=TEXT_FIELDS, decision=DECISION)
    onnx = export_onnx(module.student, tmp / "student.onnx", config)
    hf = save_student_pretrained(module.student, tmp / "hf", serving=config)
    return {"module": module, "config": config, "onnx": onnx, "hf": hf}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m lrkd serve <args>`` on a free loopback port; ``url``; output in ``log``."""

    def __init__(self, args: list[str], log: Path, start_timeout: float = 300.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self._out = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "lrkd", "serve", "--port", str(self.port),
                                      "--threads", "2", *args], stdout=self._out, stderr=subprocess.STDOUT,
                                     env=env, cwd=str(ROOT))
        deadline = time.monotonic() + start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the server did not start:\n{self.output()}")
            time.sleep(0.2)

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text(errors="replace")

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60.0) -> int:
        self.terminate()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._out.close()
        return code
