"""The HTTP API of lrkd serve, in process (FastAPI's TestClient): the endpoints' shapes, scores equal
to lrkd predict's, every bad input a 4xx JSON error naming the field, a failing scorer a JSON 500
after which the server goes on, metrics and the OpenAPI schema."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from lrkd.serve.app import ServerLimits, create_app
from lrkd.serve.batching import BatchLimits
from lrkd.serve.predict import predict_file
from lrkd.serve.service import load_model
from tests.serve import LABELS, load_minilm_tokenizer
from tests.serve.serving import DECISION, PAIRS, make_served

GRADES = LABELS["names"]
MARKER = "explode"  # a query word the failing scorer refuses


@pytest.fixture(scope="module")
def tokenizer():
    return load_minilm_tokenizer()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return make_served(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def client(served, tokenizer):
    model = load_model(onnx=served["onnx"], threads=1)
    marker = set(tokenizer(MARKER, add_special_tokens=False)["input_ids"])
    good = model.scorer

    def scorer(input_ids, attention_mask, token_type_ids):  # raises on any pair holding the marker
        if marker & set(np.unique(input_ids).tolist()):
            raise RuntimeError("marker input")
        return good(input_ids, attention_mask, token_type_ids)

    model.scorer = scorer
    app = create_app(model, ServerLimits(max_documents=8, max_body_bytes=20_000),
                     BatchLimits(max_batch_pairs=4, max_wait_ms=1), tokenizer=tokenizer)
    with TestClient(app) as c:
        yield c


def _predict(served, tmp_path, tokenizer) -> pd.DataFrame:
    """lrkd predict (the same ONNX model) on PAIRS."""
    from lrkd.serve.scorers import OnnxScorer

    rows = [{"query": q, "item_title": t, "brand": b, "description": d} for q, t, b, d in PAIRS]
    src, out = tmp_path / "pairs.jsonl", tmp_path / "scored.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scorer = OnnxScorer(served["onnx"], threads=1)
    predict_file(src, out, scorer, scorer.config, batch_size=2, progress=False, tokenizer=tokenizer)
    return pd.read_json(out, lines=True)


def test_score_equals_lrkd_predict_with_the_decision_rule(client, served, tmp_path, tokenizer):
    expected = _predict(served, tmp_path, tokenizer)
    items = [{"id": f"i{k}", "title": t, "brand": b, "description": d} for k, (_, t, b, d) in enumerate(PAIRS)]
    r = client.post("/score", json={"query": PAIRS[0][0], "items": items})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["grades"] == GRADES and body["decision"] == "thresholds"
    got = body["results"]
    assert [x["index"] for x in got] == list(range(len(PAIRS))) and got[1]["id"] == "i1"
    probs = np.array([[x["probs"][g] for g in GRADES] for x in got])
    np.testing.assert_allclose(probs, expected[[f"prob_{g}" for g in GRADES]].to_numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose([x["expected_relevance"] for x in got], expected["expected_relevance"], atol=1e-5)
    np.testing.assert_allclose([x["expected_gain"] for x in got], expected["expected_gain"], atol=1e-5)
    assert [x["grade"] for x in got] == expected["grade"].tolist()
    # the grades are the tuned rule's, which here differs from argmax on some pair
    assert DECISION["kind"] == "thresholds"
    # the rerank APIs rank as expected relevance does; TEI raw scores are the expected relevance of the title
    r = client.post("/rerank", json={"query": PAIRS[0][0], "texts": [p[1] for p in PAIRS], "raw_scores": True})
    ranks = r.json()
    scores = [x["score"] for x in ranks]
    assert scores == sorted(scores, reverse=True) and sorted(x["index"] for x in ranks) == list(range(len(PAIRS)))


def test_rerank_apis_rank_identically_and_normalise(client):
    texts = [p[1] for p in PAIRS]
    tei_raw = client.post("/rerank", json={"query": "usb charger", "texts": texts, "raw_scores": True}).json()
    tei = client.post("/rerank", json={"query": "usb charger", "texts": texts, "return_text": True}).json()
    v1 = client.post("/v1/rerank", json={"model": "m", "query": "usb charger", "documents": texts}).json()
    v2 = client.post("/v2/rerank", json={"model": "m", "query": "usb charger", "documents": texts, "top_n": 2}).json()
    order = [x["index"] for x in tei_raw]
    assert [x["index"] for x in tei] == order == [x["index"] for x in v1["results"]]
    assert [x["index"] for x in v2["results"]] == order[:2]
    # values (1, 0.5, 0): normalised = expected relevance / 1
    np.testing.assert_allclose([x["score"] for x in tei], [x["score"] for x in tei_raw], atol=1e-6)
    assert all(0 <= x["relevance_score"] <= 1 for x in v1["results"])
    assert tei[0]["text"] == texts[order[0]] and "text" not in tei_raw[0]
    assert v1["results"][0]["document"] == {"text": texts[order[0]]} and "document" not in v2["results"][0]
    assert v1["meta"]["api_version"]["version"] == "1" and v2["meta"]["api_version"]["version"] == "2"
    assert v1["id"] != v2["id"] and v1["model"] == "student" and v1["usage"]["total_tokens"] > 0


def test_cohere_object_documents_rank_fields_and_max_tokens(client):
    docs = [{"text": "Anker charger", "brand": "Anker"}, {"text": "HDMI cable", "brand": "Belkin"}]
    r = client.post("/v1/rerank", json={"query": "usb charger", "documents": docs, "rank_fields": ["text", "brand"],
                                        "return_documents": True})
    assert r.status_code == 200 and r.json()["results"][0]["document"]["brand"] in ("Anker", "Belkin")
    long = ["usb charger " * 200, "usb charger"]
    cut = client.post("/v2/rerank", json={"model": "m", "query": "usb charger", "documents": long,
                                          "max_tokens_per_doc": 2}).json()["results"]
    scores = {x["index"]: x["relevance_score"] for x in cut}
    assert scores[0] == pytest.approx(scores[1], abs=1e-6)  # both read as "usb charger" (2 tokens)


@pytest.mark.parametrize("path, body, status, field", [
    ("/rerank", {"query": "", "texts": ["a"]}, 422, "query"),
    ("/rerank", {"query": "   ", "texts": ["a"]}, 422, "query"),
    ("/rerank", {"query": "q", "texts": []}, 422, "texts"),
    ("/rerank", {"query": "q", "texts": ["a"] * 9}, 422, "texts"),
    ("/rerank", {"query": "q", "texts": ["a", 3]}, 422, "texts[1]"),
    ("/rerank", {"query": 5, "texts": ["a"]}, 422, "query"),
    ("/rerank", {"query": "q", "texts": "a"}, 422, "texts"),
    ("/rerank", {"query": "q", "texts": ["a"], "raw_scores": "yes"}, 422, "raw_scores"),
    ("/rerank", {"query": "q", "texts": ["a"], "truncation_direction": "Middle"}, 422, "truncation_direction"),
    ("/rerank", {"query": "q", "texts": ["word " * 300], "truncate": False}, 413, "texts[0]"),
    ("/rerank", {"texts": ["a"]}, 422, "query"),
    ("/rerank", [1, 2], 422, "body"),
    ("/v1/rerank", {"query": "q", "documents": []}, 422, "documents"),
    ("/v1/rerank", {"query": "q", "documents": ["a"] * 9}, 422, "documents"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_k": 2}, 422, "top_k"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, 422, "top_n"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": "2"}, 422, "top_n"),
    ("/v1/rerank", {"query": "q", "documents": [{"title": "a"}]}, 422, "documents[0].text"),
    ("/v1/rerank", {"query": "q", "documents": [7]}, 422, "documents[0]"),
    ("/v2/rerank", {"query": "q", "documents": ["a"], "max_tokens_per_doc": 0}, 422, "max_tokens_per_doc"),
    ("/v2/rerank", {"query": "q", "documents": ["a"], "relevant_spans": {"mode": "on"}}, 422, "relevant_spans"),
    ("/score", {"query": "q", "items": [{"title": "a", "colour": "red"}]}, 422, "items[0].colour"),
    ("/score", {"query": "q", "items": [{"title": "  "}]}, 422, "items[0].title"),
    ("/score", {"query": "q", "items": [{"brand": "x"}]}, 422, "items[0].title"),
    ("/score", {"query": "q", "items": [{"title": "a", "brand": ["x"]}]}, 422, "items[0].brand"),
    ("/score", {"query": "q", "items": [{"title": "a"}], "extra": 1}, 422, "extra"),
    ("/score", {"query": "", "items": [{"title": "a"}]}, 422, "query"),
])
def test_bad_input_gets_a_4xx_json_error_naming_the_field(client, path, body, status, field):
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    err = r.json()
    assert err["field"] == field and err["error"] and err["message"] == err["error"], err
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize("content, status, needle", [
    (b'{"query": "caf\xe9", "texts": ["a"]}', 400, "UTF-8"),
    (b'{"query": "q", "texts": ["a"', 422, "JSON"),
    (b'{"query": "q", "texts": ["' + b"a" * 30_000 + b'"]}', 413, "limit"),
    (b"", 422, ""),
])
def test_bad_bodies(client, content, status, needle):
    r = client.post("/rerank", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status and needle in r.json()["error"] and r.json()["field"] in ("body", "query"), r.text


def test_a_scoring_failure_is_a_json_500_for_its_request_only(client):
    import concurrent.futures as cf

    bad = {"query": "explode", "texts": ["a", "b", "c"]}
    good = {"query": "usb charger", "texts": ["Anker charger", "HDMI cable", "Belkin cable"]}
    with cf.ThreadPoolExecutor(6) as pool:  # concurrent: batched together, then isolated
        futures = [pool.submit(client.post, "/rerank", json=bad if k % 3 == 0 else good) for k in range(12)]
        answers = [f.result() for f in futures]
    for k, r in enumerate(answers):
        if k % 3 == 0:
            assert r.status_code == 500 and r.json()["error_type"] == "scoring", r.text
        else:
            assert r.status_code == 200 and len(r.json()) == 3, r.text
    assert client.post("/rerank", json=good).status_code == 200


def test_health_info_metrics_and_openapi(client):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert [g["name"] for g in info["grades"]] == GRADES and info["decision"]["kind"] == "thresholds"
    assert info["max_length"] == 128 and info["text_fields"] == ["brand", "description"]
    assert info["backend"] == "onnx" and info["precision"] == "fp32" and info["limits"]["max_documents"] == 8
    client.post("/rerank", json={"query": "q", "texts": ["a", "b"]})
    text = client.get("/metrics").text
    for name in ("lrkd_requests_total{", "lrkd_request_duration_seconds_bucket{", "lrkd_batch_pairs_bucket",
                 "lrkd_pairs_scored_total", "lrkd_requests_in_flight", "lrkd_queued_pairs"):
        assert name in text, name
    assert 'lrkd_requests_total{endpoint="/rerank",status="200"}' in text
    schema = client.get("/openapi.json").json()
    assert {"/rerank", "/v1/rerank", "/v2/rerank", "/score", "/health", "/info", "/metrics"} <= set(schema["paths"])
    item = schema["components"]["schemas"]["ScoreItem"]
    assert {"title", "brand", "description", "id"} == set(item["properties"]) and item["additionalProperties"] is False
    assert client.get("/nowhere").json()["error_type"] == "not_found"


def test_a_checkpoint_is_served_with_onnx_runtime_or_pytorch_as_lrkd_predict_scores_it(tmp_path, tokenizer):
    """--checkpoint (a Lightning .ckpt, read without Lightning): exported to ONNX at start-up by default,
    eager PyTorch with --backend torch; both score as `lrkd predict --checkpoint`."""
    from lrkd.serve.scorers import load_scorer
    from tests.serve import fit_and_save, tiny_student

    ckpt = fit_and_save(tiny_student("poly", seed=12), tmp_path / "student.ckpt")
    rows = [{"query": q, "item_title": t} for q, t, _, _ in PAIRS]
    src, out = tmp_path / "pairs.jsonl", tmp_path / "scored.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scorer, config = load_scorer(ckpt)
    predict_file(src, out, scorer, config, progress=False, tokenizer=tokenizer, text_fields=())
    expected = pd.read_json(out, lines=True)["expected_relevance"].to_numpy()
    for backend in ("onnx", "torch"):
        model = load_model(checkpoint=ckpt, backend=backend, threads=1)
        assert model.backend == backend
        with TestClient(create_app(model, tokenizer=tokenizer)) as c:
            r = c.post("/rerank", json={"query": PAIRS[0][0], "texts": [p[1] for p in PAIRS], "raw_scores": True})
        got = {x["index"]: x["score"] for x in r.json()}
        np.testing.assert_allclose([got[i] for i in range(len(PAIRS))], expected, atol=1e-5)
        assert model.workdir is None  # the exported copy is removed at shutdown


def test_the_command_line_refuses_bad_sources(tmp_path, capsys):
    from lrkd.cli import main

    assert main(["serve", "--onnx", str(tmp_path / "missing.onnx")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve"])                      # one source is required
    with pytest.raises(SystemExit):
        main(["serve", "--onnx", "a.onnx", "--checkpoint", "b.ckpt"])
