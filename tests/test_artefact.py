"""The teacher annotation artefact: write, resume, read, validate, align."""
from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import load_file, save_file

from lrkd.artefact import (SCHEMA_VERSION, ArtefactError, ArtefactManifest, ArtefactWarning,
                           ArtefactWriter, format_rationales, load_artefact)
from lrkd.schema import DataError, dataset_fingerprint

try:  # with the repository root on sys.path (pytest `pythonpath = ["."]`)
    from tests.fixtures.artefacts import make_artefact, rationale_text
except ModuleNotFoundError:  # pytest's default rootdir insertion puts tests/ on sys.path
    from fixtures.artefacts import make_artefact, rationale_text

PERSPECTIVES = ("user_intent", "structured_analysis", "business_rules")
LABELS = ("exact", "partial", "irrelevant")


@pytest.fixture
def df():
    """10 judged pairs over 4 queries; two unlabelled."""
    rows = [("q0", "hp laptop", "i0", "HP Pavilion dv7", 0), ("q0", "hp laptop", "i1", "HP ink 301", 2),
            ("q0", "hp laptop", "i2", "Dell XPS 13", 1), ("q1", "usb c cable", "i3", "USB-C cable 1m", 0),
            ("q1", "usb c cable", "i4", "HDMI cable", 2), ("q2", "red mug", "i5", "Mug, red", 0),
            ("q2", "red mug", "i6", "Mug, blue", 1), ("q2", "red mug", "i0", "HP Pavilion dv7", -1),
            ("q3", "Großer Kühlschrank", "i7", "Kühlschrank XL", 0), ("q3", "Großer Kühlschrank", "i8",
                                                                     "Eiswürfelform", -1)]
    frame = pd.DataFrame(rows, columns=["query_id", "query", "item_id", "item_title", "label"])
    frame.attrs["text_fields"] = []
    return frame


def _writer(root, df, **overrides):
    kwargs = dict(teacher_id="teacher-a", perspectives=PERSPECTIVES, label_names=LABELS, vector_dim=4,
                  dataset_fingerprint=dataset_fingerprint(df), extra={"temperature": 0.7, "n": [1, 2]})
    kwargs.update(overrides)
    return ArtefactWriter(root, **kwargs)


def _shard_data(df, rows, seed):
    """Hand-made shard content for dataset rows ``rows``."""
    rng = np.random.default_rng(seed)
    sub = df.iloc[rows]
    n = len(rows)
    probs = rng.dirichlet(np.ones(3), size=n).astype(np.float32)
    latents = rng.normal(size=(n, 3, 4)).astype(np.float32)
    rationales = {p: [f"{p} on {q}/{i}: Größe ✓" for q, i in zip(sub.query_id, sub.item_id)]
                  for p in PERSPECTIVES}
    rationales["business_rules"][0] = ""  # an empty rationale is allowed
    return list(sub.query_id), list(sub.item_id), rationales, probs, latents


SHARDS = {0: [3, 1, 0], 1: [9, 5], 2: [2, 4, 6, 7, 8]}


def _write_shards(writer, df, shard_ids):
    data = {}
    for s in shard_ids:
        data[s] = _shard_data(df, SHARDS[s], seed=s)
        writer.write_shard(s, *data[s])
    return data


# --- write and read back -----------------------------------------------------------------------


def test_three_shards_read_back_equal(tmp_path, df):
    root = tmp_path / "art"
    writer = _writer(root, df)
    data = _write_shards(writer, df, [0, 1, 2])
    manifest = writer.finalize()
    assert manifest.complete and manifest.num_rows == 10
    assert manifest.shards == ["shard-00000", "shard-00001", "shard-00002"]

    ann = load_artefact(root)
    assert len(ann) == 10
    qids = sum((data[s][0] for s in (0, 1, 2)), [])
    assert list(ann.query_ids) == qids
    assert list(ann.item_ids) == sum((data[s][1] for s in (0, 1, 2)), [])
    for p in PERSPECTIVES:
        assert ann.rationales[p] == sum((data[s][2][p] for s in (0, 1, 2)), [])  # exact text
    expected_probs = np.concatenate([data[s][3] for s in (0, 1, 2)])
    assert ann.soft_labels.dtype == np.float32
    np.testing.assert_array_equal(ann.soft_labels, expected_probs)  # stored as float32: exact
    expected_latents = np.concatenate([data[s][4] for s in (0, 1, 2)])
    assert ann.latents.dtype == np.float32 and ann.latents.shape == (10, 3, 4)
    np.testing.assert_allclose(ann.latents, expected_latents, rtol=1e-3, atol=1e-4)  # fp16 on disk
    assert not np.array_equal(ann.latents, expected_latents)  # really rounded through fp16
    m = ann.manifest
    assert (m.schema_version, m.teacher_id, m.perspectives, m.label_names, m.vector_dim) == \
        (1, "teacher-a", PERSPECTIVES, LABELS, 4)
    assert m.dataset_fingerprint == dataset_fingerprint(df)
    assert m.extra == {"temperature": 0.7, "n": [1, 2]}
    assert m.complete and m.num_rows == 10 and m.created_at.endswith("+00:00")


def test_on_disk_format_is_the_documented_one(tmp_path, df):
    root = tmp_path / "art"
    writer = _writer(root, df)
    _write_shards(writer, df, [1])
    table = pq.read_table(root / "shard-00001.parquet")
    assert table.schema.names == ["query_id", "item_id", "rationale_user_intent",
                                  "rationale_structured_analysis", "rationale_business_rules", "soft_label"]
    assert table.schema.field("query_id").type == pa.string()
    assert table.schema.field("soft_label").type == pa.list_(pa.float32())
    assert pq.ParquetFile(root / "shard-00001.parquet").metadata.row_group(0).column(0).compression == "ZSTD"
    tensors = load_file(str(root / "shard-00001.safetensors"))
    assert list(tensors) == ["latents"]
    assert tensors["latents"].dtype == np.float16 and tensors["latents"].shape == (2, 3, 4)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["shards"] == ["shard-00001"]
    assert manifest["complete"] is False and manifest["num_rows"] == 2
    assert sorted(p.name for p in root.iterdir()) == ["manifest.json", "shard-00001.parquet",
                                                      "shard-00001.safetensors"]  # no temp files left


def test_manifest_json_round_trip():
    m = ArtefactManifest(teacher_id="t", perspectives=["a", "b"], label_names=["x", "y"], vector_dim=5,
                         dataset_fingerprint="abc", num_rows=3, shards=["shard-00000"], complete=True,
                         created_at="2025-01-01T00:00:00+00:00", extra={"k": {"v": 1}})
    assert ArtefactManifest.from_json(m.to_json()) == m
    assert list(json.loads(m.to_json()))[:2] == ["schema_version", "teacher_id"]


# --- resume ------------------------------------------------------------------------------------


def test_killed_writer_resumes_with_finished_shards(tmp_path, df):
    root = tmp_path / "art"
    writer = _writer(root, df)
    _write_shards(writer, df, [0, 1])
    del writer  # killed: no finalize; a half-written shard 2 left a temp file behind
    stray = root / ".shard-00002.parquet.x1y2.parquet.tmp"
    stray.write_bytes(b"PAR1 half written")
    assert not load_artefact(root).manifest.complete  # the reader ignores the stray temp file
    assert len(load_artefact(root)) == 5

    resumed = _writer(root, df)
    assert resumed.completed_shards() == {0, 1}
    first_keys = {(df.query_id[r], df.item_id[r]) for r in SHARDS[0] + SHARDS[1]}
    assert resumed.completed_keys() == first_keys and len(first_keys) == 5
    assert not stray.exists()
    _write_shards(resumed, df, [2])
    resumed.finalize()

    ann = load_artefact(root)
    pairs = list(zip(ann.query_ids, ann.item_ids))
    assert len(pairs) == len(df) == len(set(pairs))
    assert set(pairs) == set(zip(df.query_id, df.item_id))
    assert ann.manifest.complete and ann.manifest.num_rows == 10
    assert ann.manifest.extra == {"temperature": 0.7, "n": [1, 2]}


def test_resume_with_other_settings_is_refused(tmp_path, df):
    root = tmp_path / "art"
    _write_shards(_writer(root, df), df, [0])
    with pytest.raises(ArtefactError, match=r"(?s)cannot resume.*teacher_id.*'teacher-a'.*'teacher-b'"):
        _writer(root, df, teacher_id="teacher-b")
    with pytest.raises(ArtefactError, match="vector_dim"):
        _writer(root, df, vector_dim=8)


def test_creating_in_a_foreign_directory_is_refused(tmp_path, df):
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ArtefactError, match="data.csv"):
        _writer(tmp_path, df)


def test_finished_shard_is_not_overwritten(tmp_path, df):
    root = tmp_path / "art"
    writer = _writer(root, df)
    data = _write_shards(writer, df, [0])
    before = (root / "shard-00000.parquet").read_bytes()
    other = _shard_data(df, [2, 4, 6], seed=7)
    with pytest.raises(ArtefactError, match="shard 0 is already finished"):
        writer.write_shard(0, *other)
    with pytest.raises(ArtefactError, match="shard 0 is already finished"):
        _writer(root, df).write_shard(0, *other)  # nor by a resumed writer
    assert (root / "shard-00000.parquet").read_bytes() == before
    assert list(load_artefact(root).query_ids) == data[0][0]


@pytest.mark.parametrize("change, message", [
    (lambda d: (d[0], d[1], d[2], d[3] * 1.01, d[4]), r"row 0, column 'soft_label'.*summing to 1"),
    (lambda d: (d[0], d[1], d[2], np.array([[1.2, -0.2, 0.0]] * 3), d[4]), "non-negative"),
    (lambda d: (d[0], d[1], d[2], d[3][:, :2], d[4]), r"shape \[n=3, C=3\]"),
    (lambda d: (d[0], d[1], d[2], d[3], d[4][:, :, :3]), r"\[n, K, D\] = \[3, 3, 4\]"),
    (lambda d: (d[0], d[1], d[2], d[3], d[4] * 1e5), "float16 range"),
    (lambda d: (d[0], d[1], {k: v for k, v in d[2].items() if k != "user_intent"}, d[3], d[4]),
     r"missing \['user_intent'\]"),
    (lambda d: (d[0], d[1][:2], d[2], d[3], d[4]), "3 query_ids but 2 item_ids"),
    (lambda d: (["q0", "q0", "q0"], ["i2", "i4", "i2"], d[2], d[3], d[4]), r"row 2.*repeated in this shard"),
    (lambda d: (["q1"] + d[0][1:], ["i3"] + d[1][1:], d[2], d[3], d[4]), "already written"),
])
def test_write_shard_rejects_bad_input(tmp_path, df, change, message):
    root = tmp_path / "art"
    writer = _writer(root, df)
    _write_shards(writer, df, [0])  # holds (q1, i3)
    with pytest.raises(ArtefactError, match=message) as err:
        writer.write_shard(5, *change(_shard_data(df, [2, 4, 6], seed=5)))
    assert isinstance(err.value, DataError) and "shard-00005.parquet" in str(err.value)
    assert writer.completed_shards() == {0} and not (root / "shard-00005.parquet").exists()


# --- load errors -------------------------------------------------------------------------------


def test_load_errors_are_clear(tmp_path, df):
    with pytest.raises(ArtefactError, match="no artefact directory"):
        load_artefact(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtefactError, match="no manifest.json"):
        load_artefact(tmp_path / "empty")

    root = make_artefact(df, tmp_path / "art", vector_dim=4)
    (root / "shard-00001.parquet").unlink()
    with pytest.raises(ArtefactError, match="shard-00001.parquet.*listed in the manifest"):
        load_artefact(root)

    root = make_artefact(df, tmp_path / "art2", vector_dim=4)
    save_file({"latents": np.zeros((2, 3, 4), np.float16)}, str(root / "shard-00000.safetensors"))
    with pytest.raises(ArtefactError, match="parquet file has 5 rows but the vectors file has 2"):
        load_artefact(root)


def test_newer_schema_version_is_refused(tmp_path, df):
    root = make_artefact(df, tmp_path / "art")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["schema_version"] = 2
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtefactError, match="schema_version 2 is not supported: this lrkd reads schema version 1"):
        load_artefact(root)
    assert SCHEMA_VERSION == 1


# --- validate ----------------------------------------------------------------------------------


def _validate(ann, df, **overrides):
    kwargs = dict(perspectives=PERSPECTIVES, label_names=LABELS, dataset_fingerprint=dataset_fingerprint(df))
    kwargs.update(overrides)
    ann.validate(df, **kwargs)


def test_validate_accepts_a_matching_complete_artefact(tmp_path, df):
    ann = load_artefact(make_artefact(df, tmp_path / "art"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _validate(ann, df)
        ann.validate(df, label_names=LABELS)  # fingerprint defaults to df's, perspectives unchecked


def test_validate_fingerprint_strict_and_not(tmp_path, df):
    ann = load_artefact(make_artefact(df, tmp_path / "art"))
    changed = df.copy()
    changed.loc[0, "item_title"] = "HP Pavilion dv7 (2011)"
    other = dataset_fingerprint(changed)
    with pytest.raises(ArtefactError, match=rf"fingerprint {dataset_fingerprint(df)[:12]}.*has {other[:12]}"):
        _validate(ann, changed, dataset_fingerprint=other)
    with pytest.warns(ArtefactWarning, match="fingerprint"):
        _validate(ann, changed, dataset_fingerprint=other, strict_fingerprint=False)


def test_validate_perspectives_and_label_names(tmp_path, df):
    ann = load_artefact(make_artefact(df, tmp_path / "art"))
    reordered = ("structured_analysis", "user_intent", "business_rules")
    with pytest.raises(ArtefactError, match=r"perspectives differ: artefact has \['user_intent', "
                                            r"'structured_analysis', 'business_rules'\], the config has "
                                            r"\['structured_analysis', 'user_intent', 'business_rules'\]"):
        _validate(ann, df, perspectives=reordered)
    with pytest.raises(ArtefactError, match=r"label names differ: artefact has \['exact', 'partial', "
                                            r"'irrelevant'\], the dataset has \['E', 'S', 'C', 'I'\]"):
        _validate(ann, df, label_names=("E", "S", "C", "I"))


def test_validate_unknown_pair_ids(tmp_path, df):
    ann = load_artefact(make_artefact(df, tmp_path / "art"))
    smaller = df[df.query_id != "q1"].reset_index(drop=True)
    with pytest.raises(ArtefactError, match=r"2 annotated pairs are not in the dataset, e\.g\. .*'q1', 'i[34]'"), \
            pytest.warns(ArtefactWarning, match="fingerprint"):
        _validate(ann, smaller, dataset_fingerprint=None, strict_fingerprint=False)


def test_validate_vector_dim(tmp_path, df):
    root = make_artefact(df, tmp_path / "art", vector_dim=8)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["vector_dim"] = 16
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtefactError, match=r"manifest says \[n, K=3, D=16\], latents are \[10, 3, 8\]"):
        _validate(load_artefact(root), df)


def test_validate_duplicate_pairs(tmp_path, df):
    root = make_artefact(df, tmp_path / "art", num_shards=2)
    for ext in ("parquet", "safetensors"):  # e.g. two writers' outputs merged by hand
        shutil.copy(root / f"shard-00000.{ext}", root / f"shard-00007.{ext}")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["shards"].append("shard-00007")
    (root / "manifest.json").write_text(json.dumps(manifest))
    ann = load_artefact(root)
    assert len(ann) == 15
    with pytest.raises(ArtefactError, match="5 pairs appear more than once"):
        _validate(ann, df)
    with pytest.raises(ArtefactError, match="duplicate pairs"):
        ann.align(df)


def test_validate_incomplete_artefact_only_warns(tmp_path, df):
    ann = load_artefact(make_artefact(df, tmp_path / "art", annotate_fraction=0.5, finalize=False))
    with pytest.warns(ArtefactWarning, match=r"incomplete \(5 pairs"):
        _validate(ann, df)


# --- align -------------------------------------------------------------------------------------


def test_align_partial_artefact_follows_df_order(tmp_path, df):
    ann = load_artefact(make_artefact(df, tmp_path / "art", annotate_fraction=0.6, seed=3, vector_dim=8))
    assert len(ann) == 6
    by_pair = {(q, i): r for r, (q, i) in enumerate(zip(ann.query_ids, ann.item_ids))}
    shuffled = df.sample(frac=1.0, random_state=1).reset_index(drop=True)
    aligned = ann.align(shuffled)
    assert len(aligned) == 10
    assert aligned.soft_labels.dtype == aligned.latents.dtype == np.float32
    assert aligned.latents.shape == (10, 3, 8)
    for row, (q, i) in enumerate(zip(shuffled.query_id, shuffled.item_id)):
        r = by_pair.get((q, i))
        assert aligned.annotated[row] == (r is not None)
        if r is None:
            np.testing.assert_array_equal(aligned.soft_labels[row], np.float32(1 / 3))
            assert not aligned.latents[row].any()
            assert aligned.rationales[row] == {}
        else:
            np.testing.assert_array_equal(aligned.soft_labels[row], ann.soft_labels[r])
            np.testing.assert_array_equal(aligned.latents[row], ann.latents[r])
            assert aligned.rationales[row] == {p: rationale_text(p, q, i) for p in PERSPECTIVES}
    assert aligned.annotated.sum() == 6
    np.testing.assert_allclose(aligned.soft_labels.sum(1), 1.0, atol=1e-6)
    # the same pairs, in the original order
    original = ann.align(df)
    perm = [shuffled.index[(shuffled.query_id == q) & (shuffled.item_id == i)][0]
            for q, i in zip(df.query_id, df.item_id)]
    np.testing.assert_array_equal(original.annotated, aligned.annotated[perm])
    np.testing.assert_array_equal(original.latents, aligned.latents[perm])


def test_fixture_soft_labels_favour_the_gold_label(tmp_path, df):
    ann = load_artefact(make_artefact(df, tmp_path / "art"))
    aligned = ann.align(df)
    labelled = df.label.to_numpy() >= 0
    agree = aligned.soft_labels[labelled].argmax(1) == df.label.to_numpy()[labelled]
    assert agree.mean() >= 0.75
    assert ann.manifest.extra == {"fixture": {"seed": 0, "annotate_fraction": 1.0}}


# --- format_rationales ------------------------------------------------------------------------


def test_format_rationales():
    r = {"business_rules": "Ink is an accessory.", "user_intent": "Wants a laptop.",
         "structured_analysis": "Brand matches."}
    assert format_rationales(r, PERSPECTIVES) == (
        "User intent: Wants a laptop.\nStructured analysis: Brand matches.\nBusiness rules: Ink is an accessory.")
    assert format_rationales({"user_intent": "Wants a laptop.", "structured_analysis": "  "},
                             PERSPECTIVES) == "User intent: Wants a laptop."
    assert format_rationales({}, PERSPECTIVES) == ""
