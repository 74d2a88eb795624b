"""Sources: file -> schema DataFrame, and the errors bad files get.

Fixtures (hand-made, tests/fixtures/): judgements.csv and judgements.jsonl hold the same five
pairs; home_depot_train.csv.zip is an invented ISO-8859-1 file in Kaggle's Home Depot layout.
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lrkd.schema import DataError, LabelSet, dataset_fingerprint
from lrkd.data.sources import (ChorusIcecatSource, HomeDepotSource, TableSource, bin_relevance,
                               item_id_for, normalise_query, query_id_for)

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
CHORUS = REPO / "datasets" / "chorus_icecat" / "pairs.parquet"
SHARED_DATA = REPO.parent / "shared" / "data"

GRADES = LabelSet(("exact", "partial", "irrelevant"))
CHORUS_GRADES = LabelSet(("perfect", "good", "fair", "poor"), relevant_up_to=1)
HOME_DEPOT_GRADES = LabelSet(("high", "medium", "low", "poor"), relevant_up_to=1)
COLUMNS = {"query": "search", "item_id": "sku", "item_title": "product"}
HEADER = "search,sku,product,maker,grade,score\n"


def table(path, **kw) -> TableSource:
    args = dict(columns=COLUMNS, text_fields={"brand": "maker"}, label_column="grade",
                relevance_column="score")
    args.update(kw)
    return TableSource(str(path), **args)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def sha1_id(prefix: str, text: str) -> str:
    return prefix + hashlib.sha1(text.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- the three formats


def write_parquet_twin(path: Path) -> Path:
    """The fixture's five pairs as a typed Parquet file (built by hand, not from the CSV reader)."""
    pq.write_table(pa.table({
        "search": ["red shoes", "red shoes", "Red  Shoes", "usb cable", "usb cable"],
        "sku": pa.array([101, 102, 103, 201, 202], pa.int64()),
        "product": ["Red running shoes", "Blue running shoes", "Shoe polish", "USB-C cable, 1 m", "HDMI cable"],
        "maker": ["Acme", "Acme", None, "Cablo", "Cablo"],
        "grade": ["exact", "partial", "irrelevant", "exact", "irrelevant"],
        "score": pa.array([3.0, 2.0, 1.0, 2.5, None], pa.float64()),
    }), path)
    return path


def test_csv_jsonl_parquet_give_the_same_frame(tmp_path):
    csv = table(FIXTURES / "judgements.csv").load(GRADES)
    jsonl = table(FIXTURES / "judgements.jsonl").load(GRADES)
    parquet = table(write_parquet_twin(tmp_path / "judgements.parquet")).load(GRADES)
    pd.testing.assert_frame_equal(csv, jsonl)
    pd.testing.assert_frame_equal(csv, parquet)
    assert dataset_fingerprint(csv) == dataset_fingerprint(jsonl) == dataset_fingerprint(parquet)

    assert list(csv.columns) == ["query_id", "query", "item_id", "item_title", "brand", "label", "relevance"]
    assert csv.attrs["text_fields"] == ["brand"]
    assert csv["label"].tolist() == [0, 1, 2, 0, 2]
    assert csv["item_id"].tolist() == ["101", "102", "103", "201", "202"]
    assert csv["brand"].tolist() == ["Acme", "Acme", "", "Cablo", "Cablo"]
    np.testing.assert_array_equal(csv["relevance"].to_numpy(), [3.0, 2.0, 1.0, 2.5, np.nan])
    # "Red  Shoes" is the query "red shoes": same id, whitespace tidied, case kept
    assert csv["query"].tolist()[:3] == ["red shoes", "red shoes", "Red Shoes"]
    assert csv["query_id"].tolist() == [sha1_id("q-", "red shoes")] * 3 + [sha1_id("q-", "usb cable")] * 2


def test_query_and_item_ids():
    assert normalise_query("  USB\tCable ") == "usb cable"
    assert normalise_query("ＵＳＢ cable") == "usb cable"  # NFKC folds full-width letters
    # pinned values: ids must not change between versions (caches and artefacts key on them)
    assert query_id_for("USB  cable") == "q-dcc9534ffa44" == sha1_id("q-", "usb cable")
    assert item_id_for("HDMI Cable") == "i-612a8a690fc8" == sha1_id("i-", "hdmi cable")


def test_ids_derived_when_the_file_has_none(tmp_path):
    path = write(tmp_path, "t.csv", "q,title,label\nLamp,Desk lamp,exact\nlamp,desk  LAMP,partial\n")
    df = TableSource(str(path), columns={"query": "q", "item_title": "title"}).load(GRADES, duplicates="mean")
    # both rows are one pair (same normalised query and title): merged, labels 0 and 1 -> tie -> 0
    assert len(df) == 1
    assert df.loc[0, "query_id"] == sha1_id("q-", "lamp")
    assert df.loc[0, "item_id"] == sha1_id("i-", "desk lamp")
    assert df.loc[0, "label"] == 0
    assert "relevance" not in df.columns


def test_explicit_query_id_column_is_kept(tmp_path):
    path = write(tmp_path, "t.csv", "qid,q,title,label\nQ7,lamp,Desk lamp,partial\n")
    df = TableSource(str(path), columns={"query_id": "qid", "query": "q", "item_title": "title"}).load(GRADES)
    assert df.loc[0, "query_id"] == "Q7" and df.loc[0, "label"] == 1


def test_label_map_from_raw_numbers_in_csv_and_jsonl(tmp_path):
    label_map = {2: "exact", 1: "partial", 0: "irrelevant"}  # int keys, as YAML gives them
    csv = write(tmp_path, "t.csv", "q,title,esci\na,A,2\na,B,0\nb,C,1.0\n")
    jsonl = write(tmp_path, "t.jsonl", '{"q": "a", "title": "A", "esci": 2}\n{"q": "a", "title": "B", "esci": 0}\n'
                                     '{"q": "b", "title": "C", "esci": 1.0}\n')
    cols = {"query": "q", "item_title": "title"}
    for path in (csv, jsonl):
        df = TableSource(str(path), columns=cols, label_column="esci", label_map=label_map).load(GRADES)
        assert df["label"].tolist() == [0, 2, 1]
    bad = write(tmp_path, "bad.csv", "q,title,esci\na,A,2\na,B,7\n")
    with pytest.raises(DataError) as e:
        TableSource(str(bad), columns=cols, label_column="esci", label_map=label_map).load(GRADES)
    assert f"file {bad}" in str(e.value) and "row 3" in str(e.value) and "column 'esci'" in str(e.value)
    assert "'7'" in str(e.value)


# --------------------------------------------------------------------------- thresholds


def test_bin_relevance_on_and_around_thresholds():
    values = [3.0, 2.5, 2.4999, 2.17, 2.1699, 1.83, 1.8299, 1.0]
    assert bin_relevance(values, (2.5, 2.17, 1.83)).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert bin_relevance([0.5, 0.49], (0.5,)).tolist() == [0, 1]
    with pytest.raises(ValueError, match="strictly decreasing"):
        bin_relevance([1.0], (1.83, 2.17))


def test_table_thresholds_keep_relevance(tmp_path):
    path = write(tmp_path, "t.csv", "q,title,rel\na,A,2.5\na,B,2.49\nb,C,1.83\nb,D,1.0\n")
    df = TableSource(str(path), columns={"query": "q", "item_title": "title"}, label_column="rel",
                     thresholds=(2.5, 2.17, 1.83)).load(HOME_DEPOT_GRADES)
    assert df["label"].tolist() == [0, 1, 2, 3]
    assert df["relevance"].tolist() == [2.5, 2.49, 1.83, 1.0]
    with pytest.raises(ValueError, match="3 thresholds make 4 grades"):
        TableSource(str(path), columns={"query": "q", "item_title": "title"}, label_column="rel",
                    thresholds=(2.5, 2.17, 1.83)).load(GRADES)
    gap = write(tmp_path, "gap.csv", "q,title,rel\na,A,2.5\na,B,\n")
    with pytest.raises(DataError) as e:
        TableSource(str(gap), columns={"query": "q", "item_title": "title"}, label_column="rel",
                    thresholds=(2.5, 2.17, 1.83)).load(HOME_DEPOT_GRADES)
    assert "row 3" in str(e.value) and "column 'rel'" in str(e.value) and "missing relevance" in str(e.value)


# --------------------------------------------------------------------------- bad input


def test_missing_column_is_named_with_the_columns_found(tmp_path):
    path = write(tmp_path, "t.csv", "search,sku,title,maker,grade,score\nred shoes,1,Red shoes,Acme,exact,3\n")
    with pytest.raises(DataError) as e:
        table(path).load(GRADES)
    msg = str(e.value)
    assert msg.startswith(f"file {path}, column 'product': missing column 'product'")
    assert "['search', 'sku', 'title', 'maker', 'grade', 'score']" in msg
    assert e.value.row is None and e.value.column == "product"


@pytest.mark.parametrize("which, column", [("query", "search"), ("title", "product")])
def test_empty_query_or_title_names_the_line(tmp_path, which, column):
    rows = ["red shoes,101,Red running shoes,Acme,exact,3", "usb cable,201,USB-C cable,Cablo,exact,2.5"]
    rows.append("   ,102,Blue shoes,Acme,partial,2" if which == "query" else "red shoes,102,  ,Acme,partial,2")
    path = write(tmp_path, "t.csv", HEADER + "\n".join(rows) + "\n")
    with pytest.raises(DataError) as e:
        table(path).load(GRADES)
    role = "query" if which == "query" else "item title"
    # data row 2 (0-based) of a CSV with a header is line 4
    assert str(e.value) == f"file {path}, row 4, column '{column}': empty {role}"


def test_row_numbers_in_jsonl_and_parquet(tmp_path):
    jsonl = write(tmp_path, "t.jsonl", '{"search": "a", "sku": 1, "product": "A", "maker": "", "grade": "exact", "score": 1}\n'
                                       '\n'
                                       '{"search": "", "sku": 2, "product": "B", "maker": "", "grade": "exact", "score": 1}\n')
    with pytest.raises(DataError) as e:
        table(jsonl).load(GRADES)
    assert (e.value.row, e.value.column) == (3, "search")  # the blank line 2 still counts

    parquet = tmp_path / "t.parquet"
    pq.write_table(pa.table({"search": ["a", "b"], "sku": ["1", "2"], "product": ["A", None],
                             "maker": ["", ""], "grade": ["exact", "exact"], "score": [1.0, 1.0]}), parquet)
    with pytest.raises(DataError) as e:
        table(parquet).load(GRADES)
    assert str(e.value) == f"file {parquet}, row 2, column 'product': empty item title"


def test_label_outside_the_label_set(tmp_path):
    path = write(tmp_path, "t.csv", HEADER + "a,1,A,,exact,3\na,2,B,,excellent,3\n")
    with pytest.raises(DataError) as e:
        table(path).load(GRADES)
    assert str(e.value) == (f"file {path}, row 3, column 'grade': label 'excellent' is not a grade of "
                            "['exact', 'partial', 'irrelevant']")


def test_chorus_label_index_outside_the_grades(tmp_path):
    df = pd.read_parquet(CHORUS).head(3)
    df.loc[1, "label"] = 4
    path = tmp_path / "pairs.parquet"
    df.to_parquet(path)
    with pytest.raises(DataError) as e:
        ChorusIcecatSource(str(path)).load(CHORUS_GRADES)
    assert (e.value.path, e.value.row, e.value.column) == (str(path), 2, "label")


def test_unreadable_files(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(DataError, match=f"file {missing}: file not found"):
        table(missing).load(GRADES)
    with pytest.raises(DataError, match="is a directory"):
        table(tmp_path, format="csv").load(GRADES)
    garbage = tmp_path / "t.parquet"
    garbage.write_bytes(b"this is not parquet")
    with pytest.raises(DataError, match=f"file {garbage}: cannot read as Parquet"):
        table(garbage).load(GRADES)
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes((HEADER + "a,1,A,,exact,3\nb,2,90\xb0 elbow,,exact,3\n").encode("iso-8859-1"))
    with pytest.raises(DataError) as e:
        table(latin1).load(GRADES)
    assert e.value.row == 3 and "not readable as utf-8" in str(e.value)
    assert table(latin1, encoding="iso-8859-1").load(GRADES)["item_title"].tolist() == ["A", "90° elbow"]
    with pytest.raises(DataError, match="cannot tell the format"):
        table(write(tmp_path, "t.txt", HEADER)).load(GRADES)


@pytest.mark.parametrize("name, text", [("empty.csv", ""), ("header_only.csv", HEADER),
                                        ("empty.jsonl", "\n\n")])
def test_empty_files(tmp_path, name, text):
    path = write(tmp_path, name, text)
    with pytest.raises(DataError) as e:
        table(path).load(GRADES)
    assert str(e.value).startswith(f"file {path}: empty file")


def test_empty_parquet(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"search": pa.array([], pa.string())}), path)
    with pytest.raises(DataError, match="empty file: no data rows"):
        table(path).load(GRADES)


def test_malformed_jsonl_line(tmp_path):
    path = write(tmp_path, "t.jsonl", '{"search": "a", "sku": 1, "product": "A", "grade": "exact"}\n'
                                      '{"search": "b", "sku": 2, "product": "B", "grade": "exact"}\n'
                                      '{"search": "c", "sku": 3, "product": \n')
    with pytest.raises(DataError) as e:
        table(path, relevance_column=None).load(GRADES)
    assert str(e.value).startswith(f"file {path}, row 3: malformed JSON line: Expecting value")
    not_object = write(tmp_path, "list.jsonl", '["a", 1]\n')
    with pytest.raises(DataError, match="row 1: a JSONL line must hold an object"):
        table(not_object).load(GRADES)


# --------------------------------------------------------------------------- duplicates


DUPLICATES = HEADER + "\n".join([
    "a,1,A,Acme,exact,3",        # line 2 \
    "b,5,E,,partial,2",          # line 3  |
    "A,1,A,Acme,irrelevant,1",   # line 4  | pair (a, 1): exact, irrelevant, irrelevant
    "a,1,A,Acme,irrelevant,",    # line 5 /    -> mean index 4/3 -> partial, relevance mean(3, 1) = 2
    "c,7,G,,exact,2.5",          # line 6 \ pair (c, 7): exact, partial -> 0.5, a tie -> exact
    "c,7,G,,partial,1.5",        # line 7 /    relevance 2.0
    "d,8,H,,partial,2",          # line 8 \ exact duplicates (same label) -> one row,
    "d,8,H,,partial,1",          # line 9 /    relevance mean 1.5
    "e,9,I,,irrelevant,1",       # line 10 \ pair (e, 9): irrelevant, partial -> 1.5, a tie -> partial
    "e,9,I,,partial,",           # line 11 /   relevance 1 (the missing one is left out)
]) + "\n"


def test_conflicting_duplicate_names_both_rows(tmp_path):
    path = write(tmp_path, "t.csv", DUPLICATES)
    with pytest.raises(DataError) as e:
        table(path).load(GRADES)
    msg = str(e.value)
    assert msg.startswith(f"file {path}, row 4, column 'grade': duplicate pair (query_id='{sha1_id('q-', 'a')}', "
                          "item_id='1') with conflicting labels: row 2 says 'exact', row 4 says 'irrelevant'")


def test_duplicates_mean_keeps_one_row_per_pair(tmp_path):
    df = table(write(tmp_path, "t.csv", DUPLICATES)).load(GRADES, duplicates="mean")
    assert df["query"].tolist() == ["a", "b", "c", "d", "e"]  # first rows, file order
    assert df["item_id"].tolist() == ["1", "5", "7", "8", "9"]
    assert df["label"].tolist() == [1, 1, 0, 1, 1]
    assert df["relevance"].tolist() == [2.0, 2.0, 2.0, 1.5, 1.0]
    assert df.index.tolist() == [0, 1, 2, 3, 4] and df.attrs["text_fields"] == ["brand"]


def test_exact_duplicates_collapse_silently(tmp_path):
    path = write(tmp_path, "t.csv", HEADER + "a,1,A,,exact,3\nb,2,B,,partial,2\na,1,A,,exact,3\n")
    df = table(path).load(GRADES)  # duplicates="error" does not object to identical labels
    assert df["item_id"].tolist() == ["1", "2"] and df["relevance"].tolist() == [3.0, 2.0]
    with pytest.raises(ValueError, match="duplicates must be one of"):
        table(path).load(GRADES, duplicates="first")


# --------------------------------------------------------------------------- Home Depot


def test_home_depot_fixture_zip():
    raw = zipfile.ZipFile(FIXTURES / "home_depot_train.csv.zip").read("train.csv")
    assert b"90\xb0" in raw  # the fixture really is ISO-8859-1, not UTF-8
    df = HomeDepotSource(str(FIXTURES / "home_depot_train.csv.zip")).load(HOME_DEPOT_GRADES)
    assert len(df) == 10 and df.attrs["text_fields"] == []
    assert list(df.columns) == ["query_id", "query", "item_id", "item_title", "label", "relevance"]
    assert df.loc[0, "item_title"] == "Brackett 90° Steel Corner Brace, 4-Pack"
    assert df["item_id"].tolist()[:3] == ["500001", "500001", "500002"]
    # relevance 3, 2.5, 2.67, 2.17, 1, 2.33, 1.83, 1.67, 2, 1.33 by thresholds (2.5, 2.17, 1.83)
    assert df["label"].tolist() == [0, 0, 0, 1, 3, 1, 2, 3, 2, 3]
    assert df["relevance"].tolist() == [3.0, 2.5, 2.67, 2.17, 1.0, 2.33, 1.83, 1.67, 2.0, 1.33]
    assert df["query_id"].nunique() == 5  # "Ball  Valve" is "ball valve"
    assert df.loc[7, "query"] == "Ball Valve" and df.loc[7, "query_id"] == query_id_for("ball valve")


def test_home_depot_reads_a_folder_and_plain_csv(tmp_path):
    shutil.copy(FIXTURES / "home_depot_train.csv.zip", tmp_path / "train.csv.zip")
    from_folder = HomeDepotSource(str(tmp_path)).load(HOME_DEPOT_GRADES)
    plain = tmp_path / "plain" / "train.csv"
    plain.parent.mkdir()
    plain.write_bytes(zipfile.ZipFile(FIXTURES / "home_depot_train.csv.zip").read("train.csv"))
    pd.testing.assert_frame_equal(from_folder, HomeDepotSource(str(plain)).load(HOME_DEPOT_GRADES))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=f"file {empty}: no train.csv or train.csv.zip in this folder"):
        HomeDepotSource(str(empty)).load(HOME_DEPOT_GRADES)


def test_home_depot_max_pairs_samples_whole_queries():
    path = str(FIXTURES / "home_depot_train.csv.zip")
    full = HomeDepotSource(path).load(HOME_DEPOT_GRADES)
    sizes = full.groupby("query_id").size()
    for seed in range(4):
        df = HomeDepotSource(path, max_pairs=4, sample_seed=seed).load(HOME_DEPOT_GRADES)
        pd.testing.assert_frame_equal(df, HomeDepotSource(path, max_pairs=4, sample_seed=seed).load(HOME_DEPOT_GRADES))
        chosen = df.groupby("query_id").size()
        assert (chosen == sizes[chosen.index]).all()          # whole queries only
        assert len(df) >= 4 and len(df) - chosen.max() < 4    # stops at the first query reaching 4
        position = full.reset_index().merge(df, on=["query_id", "item_id"])["index"]
        assert position.is_monotonic_increasing and len(position) == len(df)  # file order kept
    picks = {tuple(sorted(HomeDepotSource(path, max_pairs=4, sample_seed=s).load(HOME_DEPOT_GRADES)["query_id"].unique()))
             for s in range(8)}
    assert len(picks) > 1  # the seed matters
    assert len(HomeDepotSource(path, max_pairs=100).load(HOME_DEPOT_GRADES)) == 10


def _home_depot_file() -> Path | None:
    for path in (Path("/work/shared/data/home_depot/train.csv.zip"), SHARED_DATA / "home_depot" / "train.csv.zip"):
        if path.is_file():
            return path
    return None


@pytest.mark.skipif(_home_depot_file() is None, reason="no Home Depot train.csv.zip next to the repository")
def test_real_home_depot_file():
    path = _home_depot_file()
    source = HomeDepotSource(str(path))
    raw = source.read()
    assert len(raw.frame) == 74_067 and raw.frame["search_term"].nunique() == 11_795
    # 5 pairs are rated twice under search terms that differ only in spacing ("fence  mesh" /
    # " fence mesh", lines 4159-4160): conflicting grades
    with pytest.raises(DataError) as e:
        source.frame_from(raw, HOME_DEPOT_GRADES)
    assert "row 4159 says 'medium', row 4160 says 'poor'" in str(e.value)
    df = source.frame_from(raw, HOME_DEPOT_GRADES, duplicates="mean")
    assert len(df) == 74_062 and df["query_id"].nunique() == 11_793 and df["item_id"].nunique() == 54_667
    assert df["label"].value_counts().sort_index().tolist() == [34_354, 16_071, 11_729, 11_908]
    merged = df[(df["item_id"] == "102276") & (df["query"] == "fence mesh")]
    assert merged["label"].tolist() == [2] and merged["relevance"].round(6).tolist() == [2.0]  # 2.33 and 1.67


# --------------------------------------------------------------------------- the shipped dataset


def test_shipped_chorus_icecat():
    df = ChorusIcecatSource(str(CHORUS)).load(CHORUS_GRADES)
    assert len(df) == 3_668 and df["query_id"].nunique() == 135 and df["item_id"].nunique() == 2_517
    assert df["label"].value_counts().to_dict() == {0: 1472, 1: 105, 2: 238, 3: 1853}
    assert df.attrs["text_fields"] == ["brand", "description", "attributes"]
    assert df["relevance"].notna().sum() == 3_188 and df["relevance"].between(0, 3).sum() == 3_188
    assert df["query_id"].tolist() == [query_id_for(q) for q in df["query"]]
    assert (df["item_title"] != "").all() and (df["brand"] != "").all()
    first = df.iloc[0]
    assert (first["query"], first["item_id"], first["label"]) == ("laptop", "1229111", 3)  # rating 0
    assert math.isclose(first["relevance"], 1 / 3)  # raters 0, 1, 0


def test_shipped_chorus_attribute_text_is_readable():
    df = pd.read_parquet(CHORUS)
    notebook = df.loc[df["item_id"] == "2101957", "attributes"].iloc[0]  # HP Pavilion dv7-1211ea
    assert notebook.startswith("Product type: Notebook; Colour: Silver; Form factor: Clamshell;")
    assert "; Display diagonal: 17;" in notebook and "; Touchscreen: no;" in notebook
    assert "; Processor frequency: 2.13;" in notebook and "; Thermal design power (TDP): 25;" in notebook
    text = "; ".join(df["attributes"])
    assert "attr_" not in text and "_" not in " ".join(df["attributes"].str.findall(r"(?:^|; )([^:]+):").sum())
    parts = pd.Series(text.split("; "))
    measures = parts[parts.str.contains(r"^(?:Weight|Width|Depth|Height|Display diagonal): ")]
    assert len(measures) > 1000 and not measures.str.contains(r"\.0$").any()  # "17", not "17.0"
    counts = df["attributes"].map(lambda s: len(s.split("; ")) if s else 0)
    assert counts.max() == 30 and counts.median() == 13


@pytest.mark.skipif(not (SHARED_DATA / "chorus_icecat" / "Broad_Query_Set_rated.csv").is_file(),
                    reason="raw Chorus files not next to the repository")
def test_shipped_chorus_matches_the_raw_judgements():
    rated = pd.read_csv(SHARED_DATA / "chorus_icecat" / "Broad_Query_Set_rated.csv", dtype={"docid": str})
    df = pd.read_parquet(CHORUS)
    assert df["query"].tolist() == rated["query"].tolist()
    assert df["item_id"].tolist() == rated["docid"].tolist()
    assert (df["label"] == 3 - rated["rating"]).all()


def _build_script():
    spec = importlib.util.spec_from_file_location("build_chorus_icecat", REPO / "scripts" / "build_chorus_icecat.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_script_renders_attributes():
    build = _build_script()
    product = {"id": "1", "title": "X", "attr_n_display_diagonal": 17.0, "attr_b_touchscreen": False,
               "attr_t_product_colour": "Black,Silver", "attr_n_package_weight": 900.0,
               "attr_t_product_type": "Notebook", "attr_n_processor_frequency": 2.13,
               "attr_t_contrast_ratio__typical_": "200:1", "attr_n_usb_3_2_gen_1__3_1_gen_1__type_a_ports_quantity": 2.0,
               "attr_t_media_weight__tray_1_": "64 g;80 g", "attr_t_compatibility": "word " * 30}
    text = build.attribute_text(product, max_attributes=30, max_value_chars=20)
    assert text == ("Product type: Notebook; Display diagonal: 17; Touchscreen: no; Colour: Black, Silver; "
                    "Processor frequency: 2.13; Contrast ratio (typical): 200:1; "
                    "USB 3.2 gen 1 3.1 gen 1 type a ports quantity: 2; Media weight (tray 1): 64 g, 80 g; "
                    "Compatibility: word word word word…")
    assert build.attribute_text(product, max_attributes=2) == "Product type: Notebook; Display diagonal: 17"
    assert build.humanise_name("attr_t_dimensions__w_x_d_x_h___imperial_") == "Dimensions w x d x h (imperial)"


@pytest.mark.parametrize("name", ["chorus_icecat", "home_depot", "table"])
def test_data_configs_instantiate_their_source(name):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    data = OmegaConf.load(REPO / "conf" / "data" / f"{name}.yaml")
    assert data._target_ == "lrkd.data.datamodule.RelevanceDataModule" and data.name == name
    cfg = OmegaConf.create({"paths": {"root_dir": str(REPO), "cache_dir": "/tmp"}, "data": data})
    if name != "chorus_icecat":
        assert OmegaConf.is_missing(cfg.data, "path")  # the user must give data.path
        cfg.data.path = "/data/their/file.csv"
    if name == "home_depot":
        cfg.data.max_pairs = 500
    source = instantiate(cfg.data.source)
    if name == "chorus_icecat":
        assert isinstance(source, ChorusIcecatSource) and source.path == str(CHORUS)
        labels = LabelSet.from_config(cfg.data.labels)
        assert labels.names == CHORUS_GRADES.names and labels.relevant_up_to == 1
        assert len(source.load(labels, duplicates=cfg.data.duplicates)) == 3_668
    elif name == "home_depot":
        assert isinstance(source, HomeDepotSource) and source.path == "/data/their/file.csv"
        assert source.max_pairs == 500 and source.thresholds == (2.5, 2.17, 1.83)
        assert list(cfg.data.labels.names) == list(HOME_DEPOT_GRADES.names) and cfg.data.labels["values"] == "auto"
    else:
        assert isinstance(source, TableSource) and source.columns == {"query": "query", "item_title": "item_title"}
        assert OmegaConf.is_missing(cfg.data.labels, "names")
