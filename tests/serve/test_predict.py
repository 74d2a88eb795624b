"""Batch prediction on files: good rows match the module, malformed rows keep their line and error."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lrkd.schema import DataError
from lrkd.data.io import PairFile
from lrkd.serve.config import ServingConfig
from lrkd.serve.predict import predict_file
from lrkd.serve.scorers import TorchScorer
from tests.serve import LABELS, fit_and_save, load_minilm_tokenizer, reference_probs, tiny_student

GRADES = LABELS["names"]
PROB_COLUMNS = [f"prob_{g}" for g in GRADES]
SCORE_COLUMNS = [*PROB_COLUMNS, "expected_gain", "expected_relevance"]

# line numbers are the file's: header = line 1; the record at line 5 spans lines 5-6; line 8 is blank
CSV_TEXT = (
    "query_id,query,item_id,item_title,brand,description\n"                     # 1
    'q1,usb charger,i1,Anker 20W USB-C wall charger,Anker,"fast charging"\n'    # 2 good
    "q1,,i2,Some cable,Belkin,desc\n"                                           # 3 empty query
    "q2,laptop,i3,Dell XPS 13,Dell\n"                                           # 4 5 fields, not 6
    'q2,laptop,i4,"HP Pavilion dv7\n'                                           # 5 good, 2 lines
    '17 inch",HP,"Notebook, silver"\n'                                          # 6
    "q3,monitor,i5,   ,LG,x\n"                                                  # 7 blank title
    "\n"                                                                        # 8 blank line
    "q3,  4k   monitor ,i6,LG 27UL850 27 inch 4K monitor,LG,\n"                 # 9 good
)
# the pairs as training shows them (lrkd.data.encode.item_text), written out by hand
CSV_GOOD = {
    2: ("usb charger", "Anker 20W USB-C wall charger. Brand: Anker. Description: fast charging"),
    5: ("laptop", "HP Pavilion dv7\n17 inch. Brand: HP. Description: Notebook, silver"),
    9: ("4k monitor", "LG 27UL850 27 inch 4K monitor. Brand: LG"),
}
CSV_BAD = {3: "empty query", 4: "expected 6 fields", 7: "empty item_title"}


@pytest.fixture(scope="module")
def tokenizer():
    return load_minilm_tokenizer()


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """(module, checkpoint path): a tiny student after one training step, saved by Lightning."""
    module = tiny_student("gat", seed=11)
    ckpt = fit_and_save(module, tmp_path_factory.mktemp("ckpt") / "student.ckpt")
    return module, ckpt


def _check_scores(row, probs: np.ndarray) -> None:
    got = row[PROB_COLUMNS].to_numpy(dtype=float)
    np.testing.assert_allclose(got, probs, atol=2e-5, rtol=0)
    assert row["grade"] == GRADES[int(np.argmax(probs))]
    assert row["expected_gain"] == pytest.approx(float(probs @ np.array(LABELS["gains"])), abs=5e-5)
    assert row["expected_relevance"] == pytest.approx(float(probs @ np.array(LABELS["values"])), abs=5e-5)


def test_csv_good_rows_match_the_module_and_malformed_rows_keep_their_lines(student, tokenizer, tmp_path, capsys):
    from lrkd.cli import predict as main

    module, ckpt = student
    src = tmp_path / "pairs.csv"
    src.write_text(CSV_TEXT)
    out = tmp_path / "scored.csv"
    code = main(["--checkpoint", str(ckpt), "--input", str(src), "--output", str(out), "--batch-size", "2",
                 "--text-fields", "brand,description", "--no-progress"])
    assert code == 0
    summary = capsys.readouterr().out
    assert "scored 3 of 6 rows" in summary and "3 malformed row(s) (lines 3, 4, 7)" in summary

    df = pd.read_csv(out, dtype={"error": str}, keep_default_na=False, na_values={c: [""] for c in SCORE_COLUMNS})
    assert df.columns.tolist() == ["line", "query_id", "query", "item_id", "item_title", "brand", "description",
                                   "grade", *PROB_COLUMNS, "expected_gain", "expected_relevance", "error"]
    assert df["line"].tolist() == [2, 3, 4, 5, 7, 9]
    rows = df.set_index("line")
    for line, reason in CSV_BAD.items():
        assert reason in rows.loc[line, "error"], rows.loc[line, "error"]
        assert rows.loc[line, PROB_COLUMNS].isna().all() and rows.loc[line, "grade"] == ""
    assert rows.loc[3, "item_title"] == "Some cable"      # a malformed row keeps its cells where it has them
    assert rows.loc[4, "query"] == ""                     # ... and a wrong field count has none to keep
    for line, (query, item) in CSV_GOOD.items():
        assert rows.loc[line, "error"] == ""
        _check_scores(rows.loc[line], reference_probs(module, tokenizer, query, item))
    assert rows.loc[5, "item_title"] == "HP Pavilion dv7\n17 inch"
    # the rows really differ: a wrong item text would show
    assert np.ptp(rows.loc[list(CSV_GOOD), PROB_COLUMNS].to_numpy(dtype=float), axis=0).max() > 0.05


JSONL_LINES = [
    {"search_term": "usb charger", "product_title": "Anker charger", "brand": "Anker", "extra": 1},   # 1 good
    '{"search_term": "usb charger", "product_title": }',                                             # 2 bad JSON
    "",                                                                                              # 3 blank
    ["not", "an", "object"],                                                                         # 4 not an object
    {"product_title": "Cable"},                                                                      # 5 no query
    {"search_term": "laptop", "product_title": "Dell XPS 13", "brand": None},                        # 6 good
    {"search_term": "laptop", "product_title": ["a", "b"]},                                          # 7 not text
    {"search_term": "laptop", "product_title": 12345.0, "brand": "Dell"},                            # 8 good (a number)
]


def _write_jsonl(path: Path) -> None:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in JSONL_LINES) + "\n")


def test_jsonl_with_a_column_mapping_written_as_parquet(student, tokenizer, tmp_path):
    module, ckpt = student
    src, out = tmp_path / "pairs.jsonl", tmp_path / "scored.parquet"
    _write_jsonl(src)
    config = ServingConfig.from_hparams(module.hparams)
    summary = predict_file(src, out, TorchScorer(module), config, batch_size=3, progress=False,
                           columns={"query": "search_term", "item_title": "product_title"}, text_fields=["brand"])
    assert (summary.rows, summary.scored, summary.malformed_lines) == (7, 3, [2, 4, 5, 7])
    df = pd.read_parquet(out).set_index("line")
    assert df.index.tolist() == [1, 2, 4, 5, 6, 7, 8]
    assert "malformed JSON" in df.loc[2, "error"] and "must hold an object" in df.loc[4, "error"]
    assert "missing query (column 'search_term')" in df.loc[5, "error"]
    assert "must be text, got list" in df.loc[7, "error"]
    assert df.loc[[2, 4, 5, 7], PROB_COLUMNS].isna().all().all()
    assert df.loc[1, "extra"] == "1"  # passed through, as text in Parquet
    expected = {1: ("usb charger", "Anker charger. Brand: Anker"), 6: ("laptop", "Dell XPS 13"),
                8: ("laptop", "12345. Brand: Dell")}
    for line, (query, item) in expected.items():
        assert df.loc[line, "error"] == ""
        _check_scores(df.loc[line], reference_probs(module, tokenizer, query, item))


def test_parquet_scored_by_the_onnx_export_alone(student, tokenizer, tmp_path):
    """ONNX path: the sidecar is the whole serving config; Parquet column types pass through."""
    from lrkd.cli import predict as main
    from lrkd.serve.export import export_onnx

    module, _ = student
    onnx_path = export_onnx(module, tmp_path / "student.onnx", ServingConfig.from_hparams(module.hparams))
    frame = pd.DataFrame({"query_id": [7, 8, 9], "query": ["usb charger", "laptop", "monitor"],
                          "item_title": ["Anker charger", "", "LG 27UL850"], "brand": ["Anker", "Dell", None]})
    frame.to_parquet(tmp_path / "pairs.parquet")
    out = tmp_path / "scored.jsonl"
    assert main(["--onnx", str(onnx_path), "--input", str(tmp_path / "pairs.parquet"), "--output", str(out),
                 "--text-fields", "brand", "--no-progress"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3] and [r["query_id"] for r in records] == [7, 8, 9]
    assert records[1]["error"] == "empty item_title (column 'item_title')" and records[1]["prob_exact"] is None
    for r, item in ((records[0], "Anker charger. Brand: Anker"), (records[2], "LG 27UL850")):
        probs = reference_probs(module, tokenizer, r["query"], item)
        np.testing.assert_allclose([r[c] for c in PROB_COLUMNS], probs, atol=1e-4)


def test_strict_stops_at_the_first_malformed_row_and_leaves_no_file(student, tmp_path, capsys):
    from lrkd.cli import predict as main

    _, ckpt = student
    src, out = tmp_path / "pairs.csv", tmp_path / "scored.csv"
    src.write_text(CSV_TEXT)
    code = main(["--checkpoint", str(ckpt), "--input", str(src), "--output", str(out), "--strict",
                 "--text-fields", "brand,description", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"file {src}, row 3, column 'query': malformed row: empty query" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.csv"]


def test_a_column_missing_from_the_header_is_a_file_error(student, tmp_path):
    module, _ = student
    src = tmp_path / "pairs.csv"
    src.write_text(CSV_TEXT)
    config = ServingConfig.from_hparams(module.hparams)
    with pytest.raises(DataError, match=r"pairs.csv, column 'colour': missing column 'colour'"):
        predict_file(src, tmp_path / "o.csv", TorchScorer(module), config, text_fields=["colour"], progress=False)
    with pytest.raises(DataError, match=r"column 'title': missing column 'title' \(for 'item_title'\)"):
        predict_file(src, tmp_path / "o.csv", TorchScorer(module), config, columns={"item_title": "title"},
                     progress=False)


def test_csv_reader_numbers_records_by_their_first_line(tmp_path):
    src = tmp_path / "x.csv"
    src.write_text(CSV_TEXT)
    rows = list(PairFile(src))
    assert [r.line for r in rows] == [2, 3, 4, 5, 7, 9]
    assert [bool(r.error) for r in rows] == [False, False, True, False, False, False]
