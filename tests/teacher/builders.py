"""Small hand-made inputs for the teacher training and annotation tests: the tiny teacher's config,
perspectives from conf/, a four-pair schema dataset and a generations frame."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from lrkd.teacher.train.generate import ROW_COLUMNS
from lrkd.teacher.prompts import perspectives_from_config

ROOT = Path(__file__).resolve().parents[2]
GRADES = ["perfect", "good", "fair", "poor"]


def tiny_teacher_cfg(cache_dir, **overrides) -> dict:
    """conf/teacher/tiny.yaml as a plain dict, caching under ``cache_dir``."""
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "teacher" / "tiny.yaml"))
    return {**cfg, "cache_dir": str(cache_dir), **overrides}


def perspectives(*names: str):
    """Perspective objects read from conf/perspective/<name>.yaml, in the given order."""
    node = {}
    for name in names:
        node.update(OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "perspective" / f"{name}.yaml")))
    return perspectives_from_config(node)


def pair_frame() -> pd.DataFrame:
    """Four labelled pairs over three queries, one text field (brand)."""
    df = pd.DataFrame({
        "query_id": ["q1", "q1", "q2", "q3"],
        "query": ["hp laptop", "hp laptop", "usb cable", "canon toner"],
        "item_id": ["a", "b", "c", "d"],
        "item_title": ["HP Pavilion dv7 notebook", "HP laptop bag", "USB-C cable 2 m", "Canon 725 toner"],
        "brand": ["HP", "HP", "Belkin", "Canon"],
        "label": [0, 3, 1, 2],
    })
    df.attrs["text_fields"] = ["brand"]
    return df


def generation(qid, iid, perspective, sample, rationale, label, gold, parse_error=None) -> dict:
    """One generations row as the teacher_generate stage writes it."""
    text = f"{rationale}\nLabel: {label}" if label else rationale
    return {"query_id": qid, "item_id": iid, "perspective": perspective, "sample": sample, "text": text,
            "rationale": rationale, "label": label, "parse_error": parse_error,
            "correct": label is not None and label == gold, "gold": gold}


def generations_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame.from_records(rows, columns=list(ROW_COLUMNS))
