"""lrkd serve as a real process on a loopback port, called by real clients: httpx, the cohere SDK
(v1 and v2, with base_url) and Haystack's HuggingFaceTEIRanker; its scores equal `lrkd predict`'s
for the same pairs; bad bodies over a real socket; SIGTERM lets a request in flight finish."""
from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.serve import LABELS
from tests.serve.serving import PAIRS, ServerProcess, make_served

GRADES = LABELS["names"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return make_served(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def server(served, tmp_path_factory):
    proc = ServerProcess(["--onnx", str(served["onnx"]), "--max-documents", "50", "--max-body-bytes", "100000"],
                         tmp_path_factory.mktemp("log") / "server.log")
    yield proc
    assert proc.stop() in (0, -signal.SIGTERM), proc.output()  # uvicorn re-raises the signal it stopped on


def test_scores_equal_lrkd_predict_cli(server, served, tmp_path, capsys):
    from lrkd.cli import predict

    rows = [{"query": q, "item_title": t, "brand": b, "description": d} for q, t, b, d in PAIRS]
    src, out = tmp_path / "pairs.jsonl", tmp_path / "scored.csv"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert predict(["--onnx", str(served["onnx"]), "--input", str(src), "--output", str(out), "--no-progress"]) == 0
    expected = pd.read_csv(out)
    items = [{"title": t, "brand": b, "description": d} for _, t, b, d in PAIRS]
    got = httpx.post(server.url + "/score", json={"query": PAIRS[0][0], "items": items}, timeout=60).json()["results"]
    # lrkd predict writes 6 decimals in CSV
    np.testing.assert_allclose([[x["probs"][g] for g in GRADES] for x in got],
                               expected[[f"prob_{g}" for g in GRADES]].to_numpy(), atol=1e-5 + 5e-7, rtol=0)
    np.testing.assert_allclose([x["expected_relevance"] for x in got], expected["expected_relevance"], atol=1.5e-6)
    assert [x["grade"] for x in got] == expected["grade"].tolist()


def test_httpx_concurrent_requests(server):
    texts = [p[1] for p in PAIRS] * 4

    def call(k):
        return httpx.post(server.url + "/rerank", json={"query": f"usb charger {k % 3}", "texts": texts}, timeout=60)

    with httpx.Client(timeout=60) as c:
        single = {k: c.post(server.url + "/rerank", json={"query": f"usb charger {k}", "texts": texts}).json()
                  for k in range(3)}
    out = [None] * 24
    threads = [threading.Thread(target=lambda k=k: out.__setitem__(k, call(k))) for k in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, r in enumerate(out):
        assert r.status_code == 200
        a, b = r.json(), single[k % 3]
        assert [x["index"] for x in a] == [x["index"] for x in b]
        np.testing.assert_allclose([x["score"] for x in a], [x["score"] for x in b], atol=1e-5)
    metrics = httpx.get(server.url + "/metrics").text
    assert "lrkd_pairs_scored_total" in metrics


def test_cohere_sdk_v1_and_v2(server):
    cohere = pytest.importorskip("cohere")
    docs = [p[1] for p in PAIRS]
    v1 = cohere.Client(api_key="none", base_url=server.url)
    r1 = v1.rerank(model="lrkd", query="usb charger", documents=docs, top_n=3, return_documents=True)
    assert len(r1.results) == 3 and r1.results[0].document.text == docs[r1.results[0].index]
    assert r1.results[0].relevance_score >= r1.results[1].relevance_score >= r1.results[2].relevance_score
    v2 = cohere.ClientV2(api_key="none", base_url=server.url)
    r2 = v2.rerank(model="lrkd", query="usb charger", documents=docs, top_n=3, max_tokens_per_doc=512)
    assert [x.index for x in r2.results] == [x.index for x in r1.results]
    assert [x.relevance_score for x in r2.results] == pytest.approx([x.relevance_score for x in r1.results], abs=1e-6)
    with pytest.raises(Exception) as err:  # a 4xx reaches the SDK as its error, with our JSON body
        v2.rerank(model="lrkd", query="", documents=docs)
    assert getattr(err.value, "status_code", None) == 422 and "query" in str(getattr(err.value, "body", ""))


def test_haystack_tei_ranker(server):
    pytest.importorskip("haystack")
    try:
        from haystack import Document
        from haystack.components.rankers import HuggingFaceTEIRanker
    except ImportError:
        pytest.skip("this haystack has no HuggingFaceTEIRanker (haystack-ai 2.x)")
    docs = [Document(content=p[1]) for p in PAIRS]
    ranker = HuggingFaceTEIRanker(url=server.url, top_k=3)
    ranked = ranker.run(query="usb charger", documents=docs)["documents"]
    tei = httpx.post(server.url + "/rerank", json={"query": "usb charger", "texts": [p[1] for p in PAIRS]}).json()
    assert [d.content for d in ranked] == [PAIRS[x["index"]][1] for x in tei[:3]]
    assert [d.score for d in ranked] == pytest.approx([x["score"] for x in tei[:3]], abs=1e-6)


def test_bad_bodies_over_a_socket_and_the_server_stays_up(server):
    url = server.url + "/rerank"
    headers = {"content-type": "application/json"}
    r = httpx.post(url, content=b'{"query": "\xff\xfe", "texts": ["a"]}', headers=headers)
    assert r.status_code == 400 and r.json()["field"] == "body"
    r = httpx.post(url, content=b'{"query": "q", "texts": ["' + b"a" * 200_000 + b'"]}', headers=headers)
    assert r.status_code == 413 and r.json()["field"] == "body"
    r = httpx.post(url, json={"query": "q", "texts": ["a"] * 51})
    assert r.status_code == 422 and r.json()["field"] == "texts"

    def chunks():  # no Content-Length: the limit is counted while reading
        for _ in range(20):
            yield b"x" * 10_000

    r = httpx.post(url, content=chunks(), headers=headers)
    assert r.status_code == 413
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert httpx.post(url, json={"query": "q", "texts": ["a", "b"]}).status_code == 200


def test_sigterm_lets_the_request_in_flight_finish(served, tmp_path):
    proc = ServerProcess(["--hf-dir", str(served["hf"]), "--backend", "torch", "--max-documents", "20000",
                          "--max-body-bytes", str(64 * 2**20), "--max-batch-pairs", "8"], tmp_path / "server.log")
    texts = [f"{p[1]} {k} " + (p[3] or "") * 3 for k in range(1500) for p in PAIRS[:1]]
    result = {}

    def slow():
        result["r"] = httpx.post(proc.url + "/rerank", json={"query": "usb charger", "texts": texts}, timeout=600)

    try:
        caller = threading.Thread(target=slow)
        caller.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until the slow request is being served
            m = httpx.get(proc.url + "/metrics").text
            if any(line.startswith("lrkd_requests_in_flight ") and float(line.split()[1]) >= 1
                   for line in m.splitlines()):
                break
            time.sleep(0.02)
        else:
            pytest.fail("the request never was in flight")
        proc.terminate()
        caller.join(600)
        code = proc.proc.wait(120)
    finally:
        code = proc.stop()
    r = result["r"]
    assert r.status_code == 200 and len(r.json()) == len(texts)
    assert code in (0, -signal.SIGTERM), proc.output()
    assert "Waiting for" in proc.output() or "Shutting down" in proc.output()
