"""load_encoder (packaged MiniLM, config, local directory), pool, count_parameters."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lrkd.student.encoder import count_parameters, load_encoder, mean_over_tokens, pool

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
CONF = Path(__file__).resolve().parents[2] / "conf" / "student"
TINY = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 64}


@pytest.fixture
def offline(monkeypatch):
    """No model hub: the packaged MiniLM must resolve to a local directory."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from lrkd.encoders import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path(MINILM))


def test_packaged_minilm_loads_offline_with_pretrained_weights(offline, tokenizer):
    model = load_encoder(MINILM, tokenizer=MINILM)
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    assert not model.training
    assert model.pooler is None  # lrkd pools itself; an unused pooler would break DDP
    # 22,713,216 in the hub checkpoint, minus the pooler's 384 * 384 + 384
    assert count_parameters(model) == 22_713_216 - 147_840

    texts = ["laptop computer", "notebook pc", "ripe banana"]
    items = ["anker 20w usb-c wall charger for iphone", "charging cable", "ripe banana"]
    enc = tokenizer(["usb charger"] * 3, items, return_tensors="pt", padding=True)
    assert enc["attention_mask"].min() == 0  # the batch has padding
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    assert hidden.shape == (3, enc["input_ids"].shape[1], 384)
    assert torch.isfinite(hidden).all()

    # The pretrained weights are really there: similar meaning, similar mean-pooled embedding.
    single = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        h = pool(model(**single).last_hidden_state, single["attention_mask"], "mean")
    h = torch.nn.functional.normalize(h, dim=-1)
    related, unrelated = (h[0] @ h[1]).item(), (h[0] @ h[2]).item()
    assert related > unrelated + 0.2, (related, unrelated)


def test_dropout_override_reaches_the_config():
    model = load_encoder(MINILM, dropout=0.25)
    assert model.config.hidden_dropout_prob == 0.25
    assert model.config.attention_probs_dropout_prob == 0.25
    assert load_encoder(config=TINY, dropout=0.0).config.hidden_dropout_prob == 0.0


def test_tiny_config_takes_vocab_and_padding_from_the_tokenizer(tokenizer):
    model = load_encoder(config=TINY, tokenizer=MINILM)
    assert model.config.vocab_size == len(tokenizer) == 30522
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    assert model.pooler is None
    # embeddings 30522*32 + 512*32 + 2*32 + LayerNorm 64; per layer 4*(32*32+32) + 32*64+64
    # + 64*32+32 + 2 LayerNorms 128
    embeddings = 30522 * 32 + 512 * 32 + 2 * 32 + 64
    layer = 4 * (32 * 32 + 32) + (32 * 64 + 64) + (64 * 32 + 32) + 2 * 64
    assert count_parameters(model) == embeddings + 2 * layer
    enc = tokenizer("usb charger", "anker 20w usb-c charger", return_tensors="pt")
    with torch.no_grad():
        assert model(**enc).last_hidden_state.shape == (1, enc["input_ids"].shape[1], 32)


def test_config_without_tokenizer_keeps_explicit_vocab():
    model = load_encoder(config={**TINY, "vocab_size": 100})
    assert model.get_input_embeddings().num_embeddings == 100


def test_local_directory_round_trip(tmp_path):
    model = load_encoder(config={**TINY, "vocab_size": 100})
    model.save_pretrained(tmp_path / "enc")
    assert (tmp_path / "enc" / "model.safetensors").exists()
    loaded = load_encoder(str(tmp_path / "enc"))
    assert type(loaded) is type(model)
    expected, got = model.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


def test_student_yaml_configs_load():
    minilm = OmegaConf.load(CONF / "minilm.yaml")
    assert minilm.tokenizer == MINILM and minilm.config is None
    tiny = OmegaConf.load(CONF / "tiny.yaml")
    model = load_encoder(tiny.name_or_path, tiny.config, tiny.tokenizer, tiny.dropout,
                         tiny.trust_remote_code)
    assert model.config.hidden_size == 32 and model.config.vocab_size == 30522
    assert model.config.hidden_dropout_prob == tiny.dropout


@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one"),
    ({"name_or_path": MINILM, "config": TINY}, "exactly one"),
    ({"config": {"hidden_size": 32}}, "model_type"),
    ({"config": {"model_type": "no-such-model"}}, "unknown model_type"),
    ({"config": {**TINY, "hidden_sizes": 32}}, r"unknown keys \['hidden_sizes'\]"),
    ({"config": {**TINY, "vocab_size": 100}, "tokenizer": MINILM}, "30522 tokens"),
    ({"config": TINY, "dropout": 1.5}, "dropout"),
])
def test_bad_arguments_are_refused_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_encoder(**kwargs)


def test_pool_mean_and_cls_with_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]],
                           [[-1.0, 0.0], [5.0, 5.0], [7.0, 9.0]]])          # [2, 3, 2]
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    torch.testing.assert_close(pool(hidden, mask, "mean"),
                               torch.tensor([[2.0, 3.0], [11 / 3, 14 / 3]]))
    torch.testing.assert_close(pool(hidden, mask, "cls"), torch.tensor([[1.0, 2.0], [-1.0, 0.0]]))
    # a row without any token gives zeros, not NaN
    torch.testing.assert_close(mean_over_tokens(hidden, torch.zeros(2, 3)), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="unknown pooling mode"):
        pool(hidden, mask, "max")
    with pytest.raises(ValueError, match="attention_mask"):
        pool(hidden, mask[:, :2], "mean")


def test_count_parameters_trainable_only_and_shared_once():
    layer = torch.nn.Linear(3, 2)                       # 6 + 2
    frozen = torch.nn.Linear(2, 1)                      # 2 + 1
    frozen.requires_grad_(False)
    model = torch.nn.Sequential(layer, frozen, layer)   # the shared layer counts once
    assert count_parameters(model) == 11
    assert count_parameters(model, trainable_only=True) == 8
