"""Load benchmark of `lrkd serve` against infinity-emb serving the same student, on loopback.

    python benchmarks/serve_load.py setup        # the benchmark student (lrkd ONNX + HF form) and infinity's venv
    python benchmarks/serve_load.py run          # interleaved load runs -> benchmarks/results/serve_load.json
    python benchmarks/serve_load.py soak         # lrkd alone, 10 minutes: requests, errors, RSS (-> the same file)

The student: all-MiniLM-L6-v2 (packaged copy) with lrkd's default head (``match`` pooling, no
extractor, the chorus_icecat grades; weights of the head seeded: timing only), max length 128.
lrkd serves its ONNX export (fp32, or int8 with --int8). infinity-emb 0.0.78 serves the same
encoder weights as a ``BertForSequenceClassification`` directory (one logit; the pooler and a
seeded linear head instead of lrkd's head: a 384x384 matrix more, nothing next to the encoder),
its tokenizer capped at 128 tokens too, so both read the same tokens per pair. infinity-emb pins
numpy<2 and sentence-transformers<4: ``setup`` gives it a virtual environment of its own
(``--infinity-venv``, default benchmarks/.serve_load/infinity-venv), never lrkd's.

Requests: a chorus_icecat query and 20 catalogue items (title + brand, description, attributes as
lrkd.data.encode.item_text writes them), seeded; both servers get the same requests through their
Cohere-shaped endpoints (lrkd /v1/rerank, infinity /rerank). Each (concurrency, server) block is
bounded by --requests-per-block requests (at least --min-client-requests per client, so that a block at
concurrency 32 is not one burst) and --block-seconds; blocks run in rounds, the servers alternating
first, so the machine's load hits both alike; both servers stay up the whole run (the idle one waits
on a socket), with the same --threads. Reported per server and concurrency: pairs/s (pairs answered
/ block wall time, summed over rounds), p50 and p99 latency over all requests, errors; and lrkd /
infinity ratios. Each run's rows are merged into the record (--key) by concurrency, so the
concurrencies may be run one at a time; each row keeps its date, settings, the load average before
and after every block and the busiest other processes at its start (the machine may be shared).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".serve_load"
RESULTS = ROOT / "benchmarks" / "results" / "serve_load.json"
INFINITY = "infinity-emb[server,torch,optimum]==0.0.78"
TORCH = "torch==2.13.0"      # the CPU build (the same one lrkd's venv has)
MAX_LENGTH = 128
DOCS = 20
CHORUS_LABELS = {"names": ["perfect", "good", "fair", "poor"], "gains": [3, 2, 1, 0], "values": [3, 2, 1, 0],
                 "relevant_up_to": 1}


# ------------------------------------------------------------------------------------ set-up
def build_models(work: Path) -> None:
    """work/lrkd/student.onnx (+ .int8.onnx, sidecars) and work/hf (BertForSequenceClassification)."""
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from lrkd.encoders import resolve_model_path
    from lrkd.schema import LabelSet
    from lrkd.serve.config import ServingConfig
    from lrkd.serve.export import export_onnx, quantize_int8
    from lrkd.student.model import RelevanceStudent

    torch.manual_seed(0)
    encoder = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "student" / "minilm.yaml"))
    encoder["tokenizer"] = encoder["name_or_path"]
    student = RelevanceStudent(encoder, OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "extractor" / "none.yaml")),
                               CHORUS_LABELS, ["user_intent", "structured_analysis", "business_rules"]).eval()
    config = ServingConfig(label_set=LabelSet.from_config(CHORUS_LABELS), tokenizer=encoder["name_or_path"],
                           max_length=MAX_LENGTH, text_fields=("brand", "description", "attributes"))
    onnx = export_onnx(student, work / "lrkd" / "student.onnx", config)
    quantize_int8(onnx)
    # infinity: the same encoder as a sequence classifier with one logit
    # max_position_embeddings = MAX_LENGTH (the position table's first rows: the same model up to that
    # length), since infinity's ONNX cross-encoder truncates pairs there, not at the tokenizer's limit
    base = {k: v for k, v in student.encoder.config.to_dict().items() if k not in ("id2label", "label2id")}
    bert_config = BertConfig.from_dict({**base, "num_labels": 1, "max_position_embeddings": MAX_LENGTH,
                                        "architectures": ["BertForSequenceClassification"]})
    hf = BertForSequenceClassification(bert_config).eval()
    weights = dict(student.encoder.state_dict())
    weights["embeddings.position_embeddings.weight"] = weights["embeddings.position_embeddings.weight"][:MAX_LENGTH]
    weights.pop("embeddings.position_ids", None)
    missing, unexpected = hf.bert.load_state_dict(weights, strict=False)
    assert not unexpected and all(k.startswith("pooler.") for k in missing), (missing, unexpected)
    hf.save_pretrained(work / "hf", safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(encoder["name_or_path"]))
    tokenizer.model_max_length = MAX_LENGTH
    tokenizer.save_pretrained(work / "hf")
    print(f"wrote {onnx} and {work / 'hf'}")


def export_infinity_onnx(work: Path, venv: Path) -> None:
    """work/hf/model.onnx (optimum's export, fp32) for infinity's ONNX Runtime engine (--infinity-engine optimum)."""
    if (work / "hf" / "model.onnx").exists():
        return
    subprocess.run([str(venv / "bin" / "optimum-cli"), "export", "onnx", "--model", str(work / "hf"), "--task",
                    "text-classification", str(work / "hf-onnx")], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    shutil.copy(work / "hf-onnx" / "model.onnx", work / "hf" / "model.onnx")


def setup(args) -> None:
    work = Path(args.work)
    (work / "lrkd").mkdir(parents=True, exist_ok=True)
    build_models(work)
    venv = Path(args.infinity_venv)
    if not (venv / "bin" / "infinity_emb").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", TORCH, INFINITY], check=True)
    export_infinity_onnx(work, venv)
    print(f"infinity-emb in {venv}")


# ----------------------------------------------------------------------------------- servers
def machine() -> dict:
    out = {"platform": platform.platform(), "python": platform.python_version(), "cores": os.cpu_count()}
    if shutil.which("lscpu"):
        text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        out["cpu"] = fields.get("Model name", "").strip()
        out["lscpu_flags"] = fields.get("Flags", "").strip()
    return out


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def busiest(n: int = 5) -> list[str]:
    """The n processes using the most CPU (ps: %cpu, nice, the first 80 characters of the command)."""
    out = subprocess.run(["ps", "-eo", "pcpu,ni,args", "--sort=-pcpu", "--no-headers"], capture_output=True, text=True)
    return [" ".join(line.split())[:80] for line in out.stdout.splitlines()[:n]]


def rss_mib(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    return round(sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20, 1)


class Server:
    def __init__(self, name: str, cmd: list[str], port: int, log: Path, env: dict | None = None, cwd: Path = ROOT):
        self.name, self.port, self.url = name, port, f"http://127.0.0.1:{port}"
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                     cwd=str(cwd))

    def wait(self, path: str, timeout: float = 900) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} did not start in {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def start_lrkd(work: Path, port: int, args) -> Server:
    onnx = work / "lrkd" / ("student.int8.onnx" if args.int8 else "student.onnx")
    cmd = [sys.executable, "-m", "lrkd", "serve", "--onnx", str(onnx), "--port", str(port),
           "--threads", str(args.threads), "--log-level", "warning", *args.lrkd_args.split()]
    server = Server("lrkd", cmd, port, work / "lrkd.log", {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    server.wait("/health")
    return server


def start_infinity(work: Path, port: int, args) -> Server:
    venv = Path(args.infinity_venv)
    # run in the model directory as "--model-id .": infinity 0.0.78 names a local directory's ONNX file
    # by a path that includes the directory, which optimum then looks for inside it
    cmd = [str(venv.resolve() / "bin" / "infinity_emb"), "v2", "--model-id", ".", "--port", str(port),
           "--host", "127.0.0.1", "--device", "cpu", "--engine", args.infinity_engine,
           "--batch-size", str(args.infinity_batch_size), "--no-model-warmup", "--log-level", "warning",
           *args.infinity_args.split()]
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0",
           "OMP_NUM_THREADS": str(args.threads), "DO_NOT_TRACK": "1"}
    server = Server("infinity", cmd, port, work / "infinity.log", env, cwd=work / "hf")
    server.wait("/health")
    return server


# -------------------------------------------------------------------------------------- load
def requests_pool(n: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """n (query, 20 item texts) from chorus_icecat's queries and catalogue."""
    import pandas as pd

    from lrkd.data.encode import item_text

    data = ROOT / "datasets" / "chorus_icecat"
    queries = sorted(pd.read_parquet(data / "pairs.parquet", columns=["query"])["query"].unique())
    catalogue = pd.read_parquet(data / "catalogue.parquet")
    fields = [f for f in ("brand", "description", "attributes") if f in catalogue.columns]
    texts = [item_text(r, fields) for r in catalogue.head(5000).to_dict("records")]
    rng = np.random.default_rng(seed)
    return [(str(queries[rng.integers(len(queries))]), [texts[i] for i in rng.choice(len(texts), DOCS, replace=False)])
            for _ in range(n)]


def body(server: Server, query: str, docs: list[str]) -> tuple[str, dict]:
    if server.name == "lrkd":
        return "/v1/rerank", {"model": "lrkd", "query": query, "documents": docs, "return_documents": False}
    return "/rerank", {"model": "hf", "query": query, "documents": docs, "return_documents": False}


async def load_block(server: Server, pool, concurrency: int, per_client: int, seconds: float) -> dict:
    """concurrency clients, each sending up to per_client requests back to back, for at most seconds."""
    import httpx

    latencies, errors, pairs = [], 0, 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
        t0 = time.perf_counter()
        stop_at = t0 + seconds

        async def worker(k: int):
            nonlocal errors, pairs
            for j in range(per_client):
                if time.perf_counter() > stop_at:
                    return
                query, docs = pool[(k * per_client + j) % len(pool)]
                path, payload = body(server, query, docs)
                s = time.perf_counter()
                try:
                    r = await client.post(path, json=payload)
                    ok = r.status_code == 200 and len(r.json()["results"]) == len(docs)
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - s)
                if ok:
                    pairs += len(docs)
                else:
                    errors += 1

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"requests": len(latencies), "errors": errors, "pairs": pairs, "wall_s": wall, "latencies": latencies}


def summary(blocks: list[dict]) -> dict:
    lat = np.array([x for b in blocks for x in b["latencies"]]) * 1000
    wall, pairs = sum(b["wall_s"] for b in blocks), sum(b["pairs"] for b in blocks)
    return {"requests": int(lat.size), "errors": sum(b["errors"] for b in blocks), "pairs": pairs,
            "wall_s": round(wall, 2), "pairs_per_s": round(pairs / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "per_round_pairs_per_s": [round(b["pairs"] / b["wall_s"], 1) for b in blocks],
            "loadavg": [b["loadavg"] for b in blocks]}


def run(args) -> None:
    work = Path(args.work)
    pool = requests_pool(400)
    servers = {"lrkd": start_lrkd(work, args.port, args)}
    at_start = {"loadavg": loadavg(), "busiest": busiest()}
    try:
        servers["infinity"] = start_infinity(work, args.port + 1, args)
        for s in servers.values():  # warm-up
            asyncio.run(load_block(s, pool, 4, 2, 120))
        idle = {}
        blocks = {(name, c): [] for name in servers for c in args.concurrency}
        for r in range(args.rounds):
            for c in args.concurrency:
                order = list(servers) if (r + args.concurrency.index(c)) % 2 == 0 else list(servers)[::-1]
                for name in order:
                    before = loadavg()
                    per_client = max(args.min_client_requests, -(-args.requests_per_block // c))
                    block = asyncio.run(load_block(servers[name], pool, c, per_client, args.block_seconds))
                    block["loadavg"] = [before, loadavg()]
                    blocks[(name, c)].append(block)
                    print(f"round {r} c={c} {name}: {block['pairs'] / block['wall_s']:.0f} pairs/s, "
                          f"{block['requests']} requests, {block['errors']} errors, load {block['loadavg']}", flush=True)
        idle = {name: rss_mib(s.proc.pid) for name, s in servers.items()}
        key = args.key or ("load" if not args.int8 else "load_int8")
        old = json.loads(RESULTS.read_text()).get(key, {}) if RESULTS.exists() else {}
        results = dict(old.get("results", {}))
        settings = {k: v for k, v in vars(args).items() if k not in ("func", "concurrency")}
        for c in args.concurrency:
            row = {name: summary(blocks[(name, c)]) for name in servers}
            row["ratio_lrkd_over_infinity"] = {
                "pairs_per_s": round(row["lrkd"]["pairs_per_s"] / row["infinity"]["pairs_per_s"], 2),
                "p50": round(row["lrkd"]["p50_ms"] / row["infinity"]["p50_ms"], 2),
                "p99": round(row["lrkd"]["p99_ms"] / row["infinity"]["p99_ms"], 2)}
            row.update(date=time.strftime("%Y-%m-%d %H:%M"), settings=settings, at_start=at_start, rss_mib_after=idle)
            results[f"concurrency_{c}"] = row
        report = {"kind": "load", "machine": machine(), "docs_per_request": DOCS, "max_length": MAX_LENGTH,
                  "results": dict(sorted(results.items(), key=lambda kv: int(kv[0].split("_")[1])))}
        save(key, report)
        for c in args.concurrency:
            row = results[f"concurrency_{c}"]
            print(f"c={c}: " + "; ".join(f"{n} {row[n]['pairs_per_s']} pairs/s p50 {row[n]['p50_ms']} p99 {row[n]['p99_ms']} ms"
                                         for n in servers) + f"; ratios {row['ratio_lrkd_over_infinity']}")
    finally:
        for s in servers.values():
            s.stop()


def soak(args) -> None:
    work = Path(args.work)
    pool = requests_pool(400, seed=1)
    server = start_lrkd(work, args.port, args)
    try:
        asyncio.run(load_block(server, pool, args.soak_concurrency, 5, 60))
        start = {"rss_mib": rss_mib(server.proc.pid), "loadavg": loadavg(), "time": time.strftime("%H:%M:%S"),
                 "busiest": busiest()}
        samples, totals = [], {"requests": 0, "errors": 0, "pairs": 0}
        t_end = time.monotonic() + args.soak_minutes * 60
        while time.monotonic() < t_end:
            block = asyncio.run(load_block(server, pool, args.soak_concurrency, 10**6, min(30, t_end - time.monotonic())))
            for k in totals:
                totals[k] += block[k]
            samples.append({"t_s": round(args.soak_minutes * 60 - (t_end - time.monotonic())),
                            "rss_mib": rss_mib(server.proc.pid), "requests": block["requests"], "errors": block["errors"],
                            "p99_ms": round(float(np.percentile(np.array(block["latencies"]) * 1000, 99)), 1)})
            print(samples[-1], flush=True)
        end = {"rss_mib": rss_mib(server.proc.pid), "loadavg": loadavg(), "time": time.strftime("%H:%M:%S"),
               "busiest": busiest()}
        save("soak", {"kind": "soak", "date": time.strftime("%Y-%m-%d %H:%M"), "minutes": args.soak_minutes,
                      "concurrency": args.soak_concurrency, "int8": args.int8, "threads": args.threads,
                      "lrkd_args": args.lrkd_args, "nice": os.nice(0), "machine": machine(), **totals,
                      "start": start, "end": end,
                      "samples": samples})
    finally:
        server.stop()


def save(key: str, report: dict) -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[key] = report
    RESULTS.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {RESULTS} [{key}]")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("setup", "run", "soak"))
    p.add_argument("--work", default=str(WORK))
    p.add_argument("--infinity-venv", default=str(WORK / "infinity-venv"))
    p.add_argument("--port", type=int, default=18080, help="lrkd's port; infinity's is the next")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--int8", action="store_true", help="lrkd serves the int8 model")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests-per-block", type=int, default=24,
                   help="requests per (server, concurrency, round) block, at least one per client")
    p.add_argument("--min-client-requests", type=int, default=3, help="requests per client per block at least")
    p.add_argument("--block-seconds", type=float, default=90, help="no request starts later in a block")
    p.add_argument("--key", default=None, help="the record in the results file (default: load, or load_int8)")
    p.add_argument("--infinity-engine", default="optimum", choices=("torch", "optimum"),
                   help="optimum: ONNX Runtime on the fp32 ONNX export (infinity's fastest on CPU); torch: eager")
    p.add_argument("--infinity-batch-size", type=int, default=32)
    p.add_argument("--infinity-args", default="", help="more infinity_emb v2 options")
    p.add_argument("--lrkd-args", default="", help="more lrkd serve options")
    p.add_argument("--soak-minutes", type=float, default=10)
    p.add_argument("--soak-concurrency", type=int, default=8)
    args = p.parse_args(argv)
    {"setup": setup, "run": run, "soak": soak}[args.command](args)


if __name__ == "__main__":
    main()
