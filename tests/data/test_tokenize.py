import numpy as np
import pandas as pd
import pytest
from transformers import AutoTokenizer

from lrkd.data import tokenize as tk
from lrkd.data.encode import field_title, item_text
from lrkd.data.tokenize import TokenizedView, tokenize_augmented, tokenize_standard
from lrkd.encoders import resolve_model_path

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def _load_tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model_path(MINILM))


@pytest.fixture(scope="module")
def tokenizer():
    return _load_tokenizer()


def _frame(titles=None):
    titles = titles or ["HP Pavilion dv7 notebook", "Dell XPS 13 laptop", "USB-C charger 65W",
                        "Logitech wireless mouse"]
    df = pd.DataFrame({
        "query_id": ["q1", "q1", "q2", "q3"],
        "query": ["hp laptop", "hp laptop", "laptop charger", "wireless mouse for " + "gaming " * 40],
        "item_id": [f"i{i}" for i in range(len(titles))],
        "item_title": titles,
        "brand": ["HP", "Dell", "", "Logitech"],
        "description": ["Fast 17 inch notebook with a big screen " * 10, "", "Charges laptops", "Quiet clicks"],
        "label": [0, 2, 1, 0],
        "relevance": [3.0, 1.0, 2.33, np.nan],
    })
    df.attrs["text_fields"] = ["brand", "description"]
    return df


class CallCounter:
    """Counts calls of a tokenizer class's __call__ (special methods are looked up on the type)."""

    def __init__(self, monkeypatch, tokenizer):
        self.calls = 0
        original = type(tokenizer).__call__

        def counting(tok, *args, **kwargs):
            self.calls += 1
            return original(tok, *args, **kwargs)

        monkeypatch.setattr(type(tokenizer), "__call__", counting)


# ------------------------------------------------------------------------------------ item text
def test_item_text_joins_title_and_non_empty_fields():
    row = {"item_title": " HP Pavilion dv7 ", "brand": "HP", "category_path": "", "product_type": float("nan"),
           "description": " Fast laptop "}
    fields = ["brand", "category_path", "product_type", "description"]
    assert item_text(row, fields) == "HP Pavilion dv7. Brand: HP. Description: Fast laptop"
    assert item_text(pd.Series(row), ["category_path", "brand"]) == "HP Pavilion dv7. Brand: HP"
    assert field_title("category_path") == "Category path" and field_title("SKU_code") == "SKU code"


# ------------------------------------------------------------------------------------ the store
def test_tokenized_view_round_trip(tmp_path):
    view = TokenizedView.from_lists([[101, 5, 102], [], [101, 7, 8, 9, 102]], [[0, 0, 0], [], [0, 0, 1, 1, 1]])
    assert len(view) == 3 and view.lengths.tolist() == [3, 0, 5]
    assert view.input_ids.dtype == np.int32 and view.token_type_ids.dtype == np.int8
    ids, types = view[2]
    assert ids.tolist() == [101, 7, 8, 9, 102] and types.tolist() == [0, 0, 1, 1, 1]
    assert view[-1][0].tolist() == ids.tolist()
    with pytest.raises(IndexError):
        view[3]
    view.save(tmp_path / "tokens" / "k.npz", key="k")
    back = TokenizedView.load(tmp_path / "tokens" / "k.npz", key="k")
    assert [back[i][0].tolist() for i in range(3)] == [[101, 5, 102], [], [101, 7, 8, 9, 102]]
    assert [p.name for p in (tmp_path / "tokens").iterdir()] == ["k.npz"]  # no temp file left behind
    with pytest.raises(ValueError, match="key"):
        TokenizedView.load(tmp_path / "tokens" / "k.npz", key="other")


# --------------------------------------------------------------------------------- standard view
def test_standard_view_matches_the_pair_encoding(tokenizer, tmp_path):
    df = _frame()
    view, hit = tokenize_standard(df, tokenizer, 32, tmp_path)
    assert not hit and len(view) == len(df)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    # row 1: short enough to be untruncated; the item text has no empty description
    ids, types = view[1]
    q = tokenizer("hp laptop", add_special_tokens=False)["input_ids"]
    p = tokenizer("Dell XPS 13 laptop. Brand: Dell", add_special_tokens=False)["input_ids"]
    assert ids.tolist() == [cls, *q, sep, *p, sep]
    assert types.tolist() == [0] * (len(q) + 2) + [1] * (len(p) + 1)
    # row 0: long description, item truncated, query intact
    ids, _ = view[0]
    assert len(ids) == 32 and ids.tolist()[:len(q) + 2] == [cls, *q, sep] and ids[-1] == sep
    # row 3: query alone longer than max_length: truncated too, no crash, item keeps some tokens
    ids, types = view[3]
    assert len(ids) == 32 and (ids == sep).sum() == 2 and types[-2] == 1


def test_second_call_hits_the_cache_without_tokenizing(tokenizer, tmp_path, monkeypatch):
    df = _frame()
    first, hit = tokenize_standard(df, tokenizer, 32, tmp_path)
    assert not hit
    counter = CallCounter(monkeypatch, tokenizer)
    second, hit = tokenize_standard(df, tokenizer, 32, tmp_path)
    assert hit and counter.calls == 0
    assert np.array_equal(first.input_ids, second.input_ids) and np.array_equal(first.offsets, second.offsets)
    assert len(list((tmp_path / "tokens").glob("*.npz"))) == 1


def test_cache_misses_when_an_input_changes(tokenizer, tmp_path):
    df = _frame()
    tokenize_standard(df, tokenizer, 32, tmp_path)
    assert not tokenize_standard(df, tokenizer, 24, tmp_path)[1]                      # max_length
    changed = _frame(titles=["HP Pavilion dv6 notebook", "Dell XPS 13 laptop", "USB-C charger 65W",
                             "Logitech wireless mouse"])
    assert not tokenize_standard(changed, tokenizer, 32, tmp_path)[1]                 # the data
    other = _load_tokenizer()
    other.add_tokens(["pavilion-dv7"])
    assert not tokenize_standard(df, other, 32, tmp_path)[1]                          # the tokenizer
    assert tokenize_standard(df, tokenizer, 32, tmp_path)[1]                          # the original: hit
    assert len(list((tmp_path / "tokens").glob("*.npz"))) == 4


def test_progress_bar_only_for_large_inputs(tokenizer, tmp_path, monkeypatch):
    seen = []
    real = tk.tqdm
    monkeypatch.setattr(tk, "tqdm", lambda *a, **kw: seen.append(kw["disable"]) or real(*a, **kw))
    monkeypatch.setattr(tk, "CHUNK_ROWS", 3)
    df = _frame()
    view, _ = tokenize_standard(df, tokenizer, 32, tmp_path)
    assert seen == [True] and len(view) == 4  # 4 rows over chunks of 3, reassembled in order
    assert view[3][0].tolist() == tokenize_standard(df.iloc[3:], tokenizer, 32, tmp_path / "b")[0][0][0].tolist()


# -------------------------------------------------------------------------------- augmented view
def test_augmented_view_structure(tokenizer, tmp_path):
    df = _frame()
    rationales = ["User intent: the shopper wants an HP laptop. Brand matches.",
                  "", "accessory " * 200, "mouse matches"]
    view, hit = tokenize_augmented(df, rationales, tokenizer, 48, tmp_path, item_max_length=24)
    assert not hit and len(view) == 4
    standard, _ = tokenize_standard(df, tokenizer, 24, tmp_path)
    sep = tokenizer.sep_token_id
    for i, rationale in enumerate(rationales):
        ids, types = view[i]
        prefix_ids, prefix_types = standard[i]
        assert len(ids) <= 48
        assert ids[:len(prefix_ids)].tolist() == prefix_ids.tolist()  # [CLS] q [SEP] p [SEP] = standard view
        assert types[:len(prefix_types)].tolist() == prefix_types.tolist()
        first_sep = int(np.flatnonzero(ids == sep)[0])
        assert types[:first_sep + 1].tolist() == [0] * (first_sep + 1)
        assert set(types[first_sep + 1:].tolist()) <= {1}
        if not rationale:
            assert ids.tolist() == prefix_ids.tolist()  # nothing appended
            continue
        assert (ids == sep).sum() == 3 and ids[-1] == sep
        r_ids = tokenizer(rationale, add_special_tokens=False)["input_ids"]
        tail = ids[len(prefix_ids):-1].tolist()
        assert tail == r_ids[:len(tail)] and len(tail) == min(len(r_ids), 48 - len(prefix_ids) - 1)
    assert len(view[2][0]) == 48  # the long rationale fills the budget exactly


def test_augmented_view_cache_keys_on_rationales_and_lengths(tokenizer, tmp_path, monkeypatch):
    df = _frame()
    rationales = ["a", "b", "c", "d"]
    tokenize_augmented(df, rationales, tokenizer, 48, tmp_path, item_max_length=24)
    counter = CallCounter(monkeypatch, tokenizer)
    assert tokenize_augmented(df, rationales, tokenizer, 48, tmp_path, item_max_length=24)[1]
    assert counter.calls == 0
    assert not tokenize_augmented(df, ["a", "b", "c", "e"], tokenizer, 48, tmp_path, item_max_length=24)[1]
    assert not tokenize_augmented(df, rationales, tokenizer, 48, tmp_path, item_max_length=20)[1]
    assert not tokenize_augmented(df, rationales, tokenizer, 40, tmp_path, item_max_length=24)[1]


def test_bad_lengths_raise(tokenizer, tmp_path):
    df = _frame()
    with pytest.raises(ValueError, match="max_length"):
        tokenize_standard(df, tokenizer, 4, tmp_path)
    with pytest.raises(ValueError, match="item_max_length"):
        tokenize_augmented(df, ["r"] * 4, tokenizer, 25, tmp_path, item_max_length=24)
    with pytest.raises(ValueError, match="3 rationales for 4 rows"):
        tokenize_augmented(df, ["r"] * 3, tokenizer, 48, tmp_path, item_max_length=24)
