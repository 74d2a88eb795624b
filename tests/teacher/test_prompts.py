"""Prompt rendering for every configured perspective (plain and chat-template paths), perspectives
read from config, and a fourth perspective added by a file."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from lrkd.encoders import resolve_model_path
from lrkd.teacher.prompts import (LABEL_PREFIX, Perspective, perspectives_from_config, prompt_add_special_tokens,
                                  render_multi_prompt, render_perspective_prompt)
from tests.teacher import GRADES

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
QUERY, ITEM = "hp  laptop 17 inch", "HP Pavilion dv7. Brand: HP"


@pytest.fixture(scope="module")
def chat_tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"))
    tok.chat_template = CHATML
    return tok


@pytest.fixture
def perspectives(make_cfg):
    return perspectives_from_config(make_cfg("stage=teacher_generate", "teacher=tiny").perspective)


def test_config_perspectives_in_selection_order(perspectives):
    assert [p.name for p in perspectives] == ["user_intent", "structured_analysis", "business_rules"]
    assert [p.title for p in perspectives] == ["User intent", "Structured analysis", "Business rules"]
    assert perspectives[0].instruction.startswith("Reason about what the shopper")


def test_plain_prompt_of_every_perspective(perspectives):
    for p in perspectives:
        prompt = render_perspective_prompt(None, p, QUERY, ITEM, GRADES)
        assert f"Perspective: {p.title}. {p.instruction}\n" in prompt
        assert "Query: hp laptop 17 inch\n" in prompt and f"Product: {ITEM}\n" in prompt
        assert "perfect, good, fair, poor" in prompt and f'"{LABEL_PREFIX} <grade>"' in prompt
        others = [o.instruction for o in perspectives if o is not p]
        assert not any(o in prompt for o in others)
        assert prompt.endswith("\n") and "<|im_start|>" not in prompt


def test_chat_prompt_of_every_perspective(perspectives, chat_tokenizer):
    for p in perspectives:
        plain = render_perspective_prompt(None, p, QUERY, ITEM, GRADES)
        chat = render_perspective_prompt(chat_tokenizer, p, QUERY, ITEM, GRADES)
        assert chat == f"<|im_start|>user\n{plain[:-1]}<|im_end|>\n<|im_start|>assistant\n"
    assert not prompt_add_special_tokens(chat_tokenizer) and prompt_add_special_tokens(None)


def test_multi_prompt_holds_every_perspective_in_order(perspectives, chat_tokenizer):
    prompt = render_multi_prompt(chat_tokenizer, perspectives, QUERY, ITEM, GRADES)
    positions = [prompt.index(f"- {p.title}: {p.instruction}") for p in perspectives]
    assert positions == sorted(positions)
    assert '"User intent: ...", "Structured analysis: ...", "Business rules: ..."' in prompt
    assert prompt.endswith("<|im_start|>assistant\n") and "Query: hp laptop 17 inch" in prompt


def test_bad_perspective_configs():
    with pytest.raises(ValueError, match="'price'.*title"):
        perspectives_from_config({"price": {"instruction": "x"}})
    with pytest.raises(ValueError, match="distinct"):
        perspectives_from_config({"a": {"title": "Same", "instruction": "x"}, "b": {"title": "same", "instruction": "y"}})
    with pytest.raises(ValueError, match="no perspective"):
        perspectives_from_config({})
    assert perspectives_from_config(OmegaConf.create({"a": {"title": " A  b ", "instruction": "do\n it"}})) == \
        [Perspective("a", "A b", "do it")]


def test_a_fourth_perspective_file_flows_into_prompts_and_the_student_config(tmp_path, make_cfg):
    """A user adds conf/perspective/price_check.yaml (here in an extra config dir on the search path)
    and selects it: the teacher renders it and the data module / extractor see four perspectives."""
    extra = tmp_path / "extra_conf" / "perspective"
    extra.mkdir(parents=True)
    (extra / "price_check.yaml").write_text(
        "price_check:\n  title: Price check\n  instruction: Compare the price with the budget the query implies.\n")
    cfg = make_cfg("stage=teacher_generate", "teacher=tiny", f"hydra.searchpath=[file://{tmp_path / 'extra_conf'}]",
                   "perspective=[user_intent,structured_analysis,business_rules,price_check]")
    perspectives = perspectives_from_config(cfg.perspective)
    assert [p.name for p in perspectives][-1] == "price_check"
    assert list(cfg.perspectives) == list(cfg.data.perspectives) == [p.name for p in perspectives]
    prompt = render_perspective_prompt(None, perspectives[3], QUERY, ITEM, GRADES)
    assert "Perspective: Price check. Compare the price with the budget the query implies." in prompt
    assert "- Price check: Compare the price" in render_multi_prompt(None, perspectives, QUERY, ITEM, GRADES)
