"""The teacher_queries stage: new search queries from the product catalogue (InPars style), and
the transfer pairs they give the teacher to read and the student to learn from.

1. **Generate** (expensive, resumable): ``stage.products`` catalogue products in a seeded order (the
   few-shot examples' products left out); for each, the llama.cpp teacher writes one query after an
   instruction and ``stage.examples.k`` gold examples of the bank's train queries
   (:mod:`lrkd.teacher.label.queries`), into ``<work_dir>/queries/generations/`` (or
   ``stage.generations_dir``). A larger ``stage.products`` generates only the new products.
2. **Filter and retrieve** (a minute, every run whose inputs changed): parse, drop leaks of any
   query of the dataset, keep a query only when BM25 brings its product back in its top
   ``stage.filter.retrieval_k``, dedupe (:func:`lrkd.data.transfer.filter_queries`); then each kept
   query's top ``stage.candidates.k`` catalogue items (:func:`lrkd.data.transfer.candidate_pairs`).

Writes into ``<work_dir>/queries/``: ``transfer.parquet`` (query_id, query, item_id, source_item_id,
rank, score: what ``data.transfer`` attaches), ``queries.parquet`` (every generation: completion,
parsed query, the reason it was dropped or null, nearest labelled query and cosine, source rank),
``provenance.json`` (teacher, prompt, examples, settings, counts after each filter, times) and
``stage.json``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig

from lrkd.data.encode import item_texts
from lrkd.data.pool import load_catalogue
from lrkd.data.transfer import candidate_pairs, filter_queries, sample_products, write_transfer
from lrkd.schema import DataError, text_fields
from lrkd.stages.base import StageRun, fingerprint_config, stage_folder
from lrkd.teacher.label.panel import choose_bank
from lrkd.teacher.label.queries import (QUERY_INSTRUCTION, SETTINGS_FILE, QUERY_PREFIX, QueryWriter,
                                        choose_query_examples, generate_queries, newline_token_ids, parse_query,
                                        product_prompts, query_message, read_generations)
from lrkd.teacher.label.workers import EXECUTION_KEY
from lrkd.teacher.prompts import render_message
from lrkd.teacher.model import llama_cpp_source
from lrkd.teacher.runtime.engines import resolve_engine
from lrkd.utils import plain, write_json_atomic

log = logging.getLogger(__name__)

STAGE = "teacher_queries"
FOLDER = "queries"
TIMINGS = "timings.json"
# settings that change where or how fast the stage runs, not what it writes
RUN_KEYS = ("work_dir", "generations_dir", "generate", "workers", "shard_size", "device")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def generations_folder(cfg: DictConfig) -> Path:
    if cfg.stage.get("generations_dir"):
        return Path(str(cfg.stage.generations_dir)).expanduser()
    return stage_folder(cfg, FOLDER) / "generations"


def query_bank(cfg: DictConfig, dm) -> list[str]:
    """The few-shot bank: ``data.split.train_only`` when set, else chosen from the train split."""
    given = cfg.data.get("split", {}).get("train_only")
    if given:
        return [str(q) for q in given]
    return choose_bank(dm.frame, dm.splits["train"], int(dm.label_set.relevant_up_to),
                       int(cfg.stage.examples.get("bank_size", 8)), int(cfg.seed))


def generate(cfg: DictConfig, catalogue: pd.DataFrame, sample: np.ndarray, examples, folder: Path,
             catalogue_sha: str) -> dict:
    """Step 1: a query for every sampled product not generated yet; returns the run's figures."""
    spec = cfg.stage
    if str(cfg.teacher.get("runtime", "transformers")) != "llama_cpp":
        raise ValueError(f"stage=teacher_queries runs a llama.cpp teacher (teacher.runtime=llama_cpp, e.g. "
                         f"teacher=qwen2.5-coder-1.5b); teacher {cfg.teacher.name!r} has runtime "
                         f"{cfg.teacher.get('runtime', 'transformers')!r}")
    gguf, tokenizer = llama_cpp_source(cfg.teacher)
    texts = item_texts(catalogue.iloc[sample])
    ids = catalogue["item_id"].astype(str).to_numpy()[sample]
    instruction = str(spec.get("instruction") or QUERY_INSTRUCTION)
    prompts = product_prompts(tokenizer, ids, texts, examples, instruction, spec.get("max_item_words"))
    temperature = float(spec.get("temperature", 0.0))
    shared = prompts[0].shared if prompts else []
    llama = plain(cfg.teacher.llama_cpp)
    prompt = render_message(tokenizer, query_message("<the product>", examples, instruction,
                                                     spec.get("max_item_words"))) + QUERY_PREFIX
    settings = {"prompt": prompt, "teacher": str(cfg.teacher.name), "gguf": Path(gguf).name,
                "gguf_bytes": Path(gguf).stat().st_size,
                "catalogue_sha256": catalogue_sha, "instruction": instruction,
                "examples": [[e.query, e.item_id] for e in examples], "max_item_words": spec.get("max_item_words"),
                "max_new_tokens": int(spec.max_new_tokens), "temperature": temperature,
                "seed": int(cfg.seed) if temperature > 0 else None,
                "no_repeat_ngram_size": int(spec.get("no_repeat_ngram_size", 0)), "n_batch": int(llama["n_batch"]),
                "prefix_sha256": hashlib.sha256(json.dumps(shared).encode()).hexdigest(),
                EXECUTION_KEY: {"engine": resolve_engine(str(llama.get("engine", "cyllama")), gguf),
                                "n_seq": int(llama.get("n_seq", 1) or 1), "workers": int(spec.workers)}}
    writer = QueryWriter(tokenizer.name_or_path, int(spec.max_new_tokens), newline_token_ids(tokenizer),
                         temperature, int(cfg.seed), int(spec.get("no_repeat_ngram_size", 0)))
    result = generate_queries(prompts, gguf=gguf, runtime=llama, out_dir=folder, settings=settings, writer=writer,
                              workers=int(spec.workers), shard_size=int(spec.shard_size))
    timings = json.loads((folder / TIMINGS).read_text()) if (folder / TIMINGS).is_file() else []
    if result["written"]:
        timings.append({"written": result["written"], "seconds": round(result["seconds"], 2),
                        "execution": settings[EXECUTION_KEY]})
        write_json_atomic(folder / TIMINGS, timings)
    return result


def run(cfg: DictConfig) -> dict:
    started = time.time()
    spec = cfg.stage
    dm = instantiate(cfg.data, seed=cfg.seed, annotations=None, transfer=None, _recursive_=False)
    dm.setup("fit")
    frame = dm.frame
    path = Path(str(spec.catalogue)).expanduser()
    if not path.is_file():
        raise DataError("catalogue not found (stage.catalogue)", path=str(path))
    catalogue = load_catalogue(path, text_fields(frame))  # names the columns it lacks, and the file
    catalogue_sha = _sha256(path)
    bank = query_bank(cfg, dm) if int(spec.examples.k) else []
    examples = choose_query_examples(frame, dm.splits["train"], bank, int(spec.examples.k),
                                     int(dm.label_set.relevant_up_to), int(cfg.seed))
    sample = sample_products(catalogue, int(spec.products), int(cfg.seed), [e.item_id for e in examples])
    folder = generations_folder(cfg)
    generation = (generate(cfg, catalogue, sample, examples, folder, catalogue_sha) if spec.get("generate", True)
                  else {"written": 0, "seconds": 0.0})
    done = read_generations(folder).drop_duplicates("item_id").set_index("item_id")
    ids = [i for i in catalogue["item_id"].astype(str).to_numpy()[sample] if i in done.index]
    generated = pd.DataFrame({"item_id": ids, "completion": done.loc[ids, "completion"].astype(str).tolist()})
    generated["query"] = generated["completion"].map(parse_query)
    digest = hashlib.sha256(generated[["item_id", "completion"]].to_json().encode()).hexdigest()

    config = fingerprint_config(cfg, stage={k: v for k, v in plain(spec).items() if k not in RUN_KEYS}, trainer=False)
    run_ = StageRun(cfg, STAGE, FOLDER, config, [dm.fingerprint, catalogue_sha, digest])
    if (reused := run_.reused()) is not None:
        return reused
    run_.start(seed=False)
    filters = spec.filter
    labelled = sorted(set(frame["query"].astype(str)))  # every query of the dataset, whatever its split
    table, counts = filter_queries(generated, catalogue, labelled, max_words=int(filters.max_words),
                                   max_chars=int(filters.max_chars), echo_fraction=float(filters.echo_fraction),
                                   leak_threshold=float(filters.leak_threshold),
                                   retrieval_k=int(filters.retrieval_k), seed=int(cfg.seed), device=str(spec.device))
    table.insert(1, "completion", generated["completion"].to_numpy())
    kept = table[table["reason"].isna()]
    candidates = spec.candidates
    transfer = candidate_pairs(kept, catalogue, str(candidates.retriever), int(candidates.k), int(cfg.seed),
                               str(spec.device))
    out = run_.out
    out.mkdir(parents=True, exist_ok=True)
    write_transfer(transfer, out / "transfer.parquet",
                   {"catalogue": str(path.resolve()), "catalogue_sha256": catalogue_sha, "dataset": str(dm.name),
                    "dataset_fingerprint": dm.fingerprint, "teacher": str(cfg.teacher.name),
                    "retriever": str(candidates.retriever), "k": int(candidates.k),
                    "stage_fingerprint": run_.fingerprint})
    table.to_parquet(out / "queries.parquet", compression="zstd", index=False)
    timings = json.loads((folder / TIMINGS).read_text()) if (folder / TIMINGS).is_file() else []
    seconds, written = sum(t["seconds"] for t in timings), sum(t["written"] for t in timings)
    metrics = {**{f"count/{k}": v for k, v in counts.items()},
               "dropped": {str(k): int(v) for k, v in table["reason"].value_counts().items()},
               "transfer_pairs": len(transfer), "transfer_queries": int(transfer["query_id"].nunique()),
               "generated_now": int(generation["written"]),
               "seconds_per_product": (seconds / written) if written else None}
    made = json.loads((folder / SETTINGS_FILE).read_text()) if (folder / SETTINGS_FILE).is_file() else {}
    provenance = {"teacher": plain(cfg.teacher), "prompt": made.pop("prompt", None), "generation_settings": made,
                  "examples": [e.__dict__ for e in examples], "bank": bank, "settings": plain(spec),
                  "seed": int(cfg.seed), "counts": counts, "dropped": metrics["dropped"],
                  "generation": {"timings": timings, "seconds": seconds, "products": written,
                                 "seconds_per_product": metrics["seconds_per_product"]},
                  "dataset": {"name": str(dm.name), "fingerprint": dm.fingerprint, "labelled_queries": len(labelled)},
                  "catalogue": {"path": str(path.resolve()), "sha256": catalogue_sha, "products": len(catalogue)},
                  "transfer": {"pairs": len(transfer), "queries": metrics["transfer_queries"],
                               "retriever": str(candidates.retriever), "k": int(candidates.k)},
                  "wall_time_s": round(time.time() - started, 2)}
    write_json_atomic(out / "provenance.json", provenance, default=str)
    log.info("teacher_queries: %s; %d transfer pairs for %d queries in %s", counts, len(transfer),
             metrics["transfer_queries"], out)
    return run_.finish(metrics, transfer=str(out / "transfer.parquet"))
