"""student.prune: the layers and FFN neurons kept, the exact save_pretrained round trip, bad input."""
from __future__ import annotations

import pytest
import torch

from lrkd.student.checkpoint import load_student
from lrkd.student.model import RelevanceStudent
from lrkd.student.prune import ffn_importance, is_pruning, prune_encoder, select_layers

LABELS = {"names": ["exact", "partial", "irrelevant"], "gains": [2, 1, 0], "values": [2, 1, 0], "relevant_up_to": 1}
NONE = {"_target_": "lrkd.student.extractor.NoExtractor"}
MLP = {"_target_": "lrkd.student.extractor.MLPExtractor", "latent_dim": 8}


def encoder_config(prune=None, layers=4, ffn=64):
    return {"name_or_path": None, "tokenizer": "sentence-transformers/all-MiniLM-L6-v2", "pooling": "match",
            "config": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": layers, "num_attention_heads": 2,
                       "intermediate_size": ffn, "max_position_embeddings": 128},
            "dropout": 0.0, "classifier_dropout": 0.0, "prune": prune}


def student(prune=None, extractor=NONE, seed=0):
    torch.manual_seed(seed)
    return RelevanceStudent(encoder_config(prune), extractor, LABELS, ["a", "b"]).eval()


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 5000, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0
    types = torch.zeros_like(ids)
    types[:, 5:] = 1
    return ids, mask, types


def test_layer_selection():
    assert select_layers(6, 3, "alternate") == [0, 2, 5]
    assert select_layers(6, 2, "alternate") == [0, 5]
    assert select_layers(6, 1, "alternate") == [0]
    assert select_layers(6, 6, "alternate") == list(range(6))
    assert select_layers(6, 2, "bottom") == [0, 1]
    assert select_layers(6, 2, "top") == [4, 5]
    assert select_layers(6, None, [5, 1]) == [1, 5]
    for bad in [(6, 0, "alternate"), (6, 7, "top"), (6, 2, "middle"), (6, None, [1, 1]), (6, None, [6]),
                (6, 3, [0, 1])]:
        with pytest.raises(ValueError, match="student.prune"):
            select_layers(*bad)


def test_pruned_shapes_and_the_weights_kept():
    full = student()
    pruned = student({"num_layers": 2, "layer_selection": "alternate", "intermediate_size": 16})
    enc = pruned.encoder
    assert (enc.config.num_hidden_layers, enc.config.intermediate_size) == (2, 16)
    assert len(enc.encoder.layer) == 2
    for new, old in zip(enc.encoder.layer, [full.encoder.encoder.layer[i] for i in (0, 3)]):
        w_in, w_out = old.intermediate.dense.weight, old.output.dense.weight
        keep = ffn_importance(w_in, w_out).topk(16).indices.sort().values
        assert new.intermediate.dense.weight.shape == (16, 32) and new.output.dense.weight.shape == (32, 16)
        assert torch.equal(new.intermediate.dense.weight, w_in[keep])
        assert torch.equal(new.intermediate.dense.bias, old.intermediate.dense.bias[keep])
        assert torch.equal(new.output.dense.weight, w_out[:, keep])
        assert torch.equal(new.output.dense.bias, old.output.dense.bias)          # the output keeps all H
        assert torch.equal(new.attention.self.query.weight, old.attention.self.query.weight)
        # the neurons kept are the largest by ||w_in|| * ||w_out||
        scores = ffn_importance(w_in, w_out)
        assert scores[keep].min() >= scores[~torch.isin(torch.arange(64), keep)].max()
    assert pruned.parameter_counts()["encoder"] < full.parameter_counts()["encoder"]


def test_pruning_to_the_full_size_changes_nothing():
    full, same = student(), student({"num_layers": 4, "intermediate_size": 64})
    ids, mask, types = batch()
    with torch.no_grad():   # the encoders (the heads' random init differs: prune_linear_layer draws too)
        a = full.encoder(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        b = same.encoder(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    assert torch.equal(a, b)
    assert not is_pruning({"num_layers": None, "layer_selection": "alternate", "intermediate_size": None})


@pytest.mark.parametrize("extractor", [NONE, MLP])
def test_save_pretrained_round_trip_is_exact(tmp_path, extractor):
    pruned = student({"num_layers": 3, "layer_selection": "top", "intermediate_size": 24}, extractor)
    pruned.save_pretrained(tmp_path / "s")
    loaded = load_student(tmp_path / "s").model
    assert (loaded.encoder.config.num_hidden_layers, loaded.encoder.config.intermediate_size) == (3, 24)
    a, b = pruned.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        assert torch.equal(pruned.predict_logits(*batch(1)), loaded.predict_logits(*batch(1)))


def test_a_checkpoint_of_a_pruned_student_loads_into_the_same_config():
    """What the student .ckpt reader does: rebuild from the hyper-parameters (pruned again), load the weights."""
    spec = {"num_layers": 2, "intermediate_size": 8}
    trained = student(spec, seed=1)
    rebuilt = student(spec, seed=2)
    rebuilt.load_state_dict(trained.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(trained.predict_logits(*batch()), rebuilt.predict_logits(*batch()))


def test_bad_prune_config_is_a_clear_error():
    with pytest.raises(ValueError, match="intermediate_size must be in \\[1, 64\\]"):
        student({"intermediate_size": 65})
    with pytest.raises(ValueError, match="unknown keys \\['heads'\\]"):
        student({"heads": 2})
    with pytest.raises(ValueError, match="importance"):
        student({"intermediate_size": 8, "importance": "taylor"})
    with pytest.raises(ValueError, match="not a BERT-like encoder"):
        prune_encoder(torch.nn.Linear(2, 2), {"num_layers": 1})
