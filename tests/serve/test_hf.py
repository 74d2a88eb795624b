"""The save_pretrained form (round trip, loadable by transformers alone) and weights_only checkpoints."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lrkd.serve.hf import HEAD_CONFIG, HEAD_WEIGHTS, save_student_pretrained
from lrkd.serve.config import DEFAULT_MAX_LENGTH, ServingConfig
from lrkd.serve.scorers import load_scorer
from lrkd.student.checkpoint import load_student
from tests.serve import LABELS, MINILM, fit_and_save, tiny_student


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (3, 21), generator=g)
    mask = torch.ones(3, 21, dtype=torch.long)
    mask[1, 13:] = 0
    types = torch.zeros(3, 21, dtype=torch.long)
    types[:, 9:] = 1
    return ids, mask, types


@pytest.mark.parametrize("extractor", ["poly", "gat"])
def test_save_and_load_pretrained_round_trip_gives_identical_logits(tmp_path, extractor):
    module = tiny_student(extractor, seed=21)
    out = save_student_pretrained(module, tmp_path / "student", max_length=96, text_fields=["brand"])
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", HEAD_WEIGHTS, HEAD_CONFIG, "tokenizer.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".ckpt")) for n in names)

    loaded = load_student(out).model
    assert not loaded.training
    ids, mask, types = _inputs()
    with torch.no_grad():
        expected, got = module.predict_logits(ids, mask, types), loaded.predict_logits(ids, mask, types)
    assert torch.equal(expected, got)
    assert type(loaded.extractor) is type(module.student.extractor)
    assert loaded.parameter_counts()["inference"] == module.parameter_counts()["inference"]

    config = json.loads((out / HEAD_CONFIG).read_text())
    assert config["extractor"]["_target_"].endswith(type(module.student.extractor).__name__)
    assert config["label_set"]["names"] == LABELS["names"] and config["pooling"] == "mean"
    serving = ServingConfig.of_student(load_student(out))
    assert serving.tokenizer == str(out) and serving.max_length == 96 and serving.text_fields == ("brand",)
    assert serving.label_set.values == tuple(LABELS["values"])


def test_other_tools_load_the_encoder_and_tokenizer_with_transformers_alone(tmp_path):
    from transformers import AutoModel, AutoTokenizer

    module = tiny_student("mlp", seed=22)
    out = save_student_pretrained(module, tmp_path / "student")
    encoder = AutoModel.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    enc = tokenizer("usb charger", "Anker 20W charger", return_tensors="pt")
    with torch.no_grad():
        a = encoder(**enc).last_hidden_state
        b = module.student.encoder(**enc).last_hidden_state
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_a_lightning_checkpoint_loads_with_weights_only(tmp_path):
    from lrkd.student.module import StudentModule

    module = tiny_student("gat", seed=23)
    ckpt = fit_and_save(module, tmp_path / "student.ckpt")
    raw = torch.load(ckpt, weights_only=True, map_location="cpu")  # plain types only: no pickled objects
    assert raw["hyper_parameters"]["data_spec"]["label_set"]["names"] == LABELS["names"]
    loaded = StudentModule.load_from_checkpoint(str(ckpt), weights_only=True, map_location="cpu").eval()
    ids, mask, types = _inputs(1)
    with torch.no_grad():
        assert torch.equal(module.predict_logits(ids, mask, types), loaded.predict_logits(ids, mask, types))
    # the step really changed the weights that were saved (the comparison is not with the init)
    assert not torch.equal(raw["state_dict"]["student.classifier.1.weight"],
                           tiny_student("gat", seed=23).student.classifier[1].weight)

    # serving reads it the same way: eager scorer from the checkpoint, and from its save_pretrained copy
    scorer, config = load_scorer(checkpoint=ckpt)
    assert config.max_length == DEFAULT_MAX_LENGTH and config.tokenizer == MINILM and config.text_fields is None
    hf_scorer, hf_config = load_scorer(checkpoint=save_student_pretrained(loaded, tmp_path / "hf"))
    assert hf_config.label_set == config.label_set
    np.testing.assert_array_equal(scorer(ids.numpy(), mask.numpy(), types.numpy()),
                                  hf_scorer(ids.numpy(), mask.numpy(), types.numpy()))


def test_serving_config_reads_a_recorded_max_length_and_text_fields():
    hp = {"encoder": {"tokenizer": MINILM},
          "data_spec": {"label_set": LABELS, "perspectives": ["a", "b"], "max_length": 64,
                        "text_fields": ["brand", "description"]}}
    config = ServingConfig.from_hparams(hp)
    assert (config.max_length, config.text_fields, config.perspectives) == (64, ("brand", "description"), ("a", "b"))
    assert ServingConfig.from_hparams(hp, max_length=32).max_length == 32
    assert ServingConfig.from_dict(config.to_dict()) == config
