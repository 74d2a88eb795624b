#!/usr/bin/env python
"""Build the embedded dataset ``datasets/chorus_icecat/{pairs,catalogue}.parquet`` from the Chorus files.

Joins ``Broad_Query_Set_rated.csv`` (query, docid, rating 0-3) with the Open Icecat products in
``icecat_vectors/*.json.zip`` (only the rated docids) and the three raters' scores in
``Broad_Query_Set_individual_ratings.csv``. Output columns (the lrkd schema):

    query_id    "q-" + sha1 of the normalised query (lrkd.data.sources.query_id_for)
    query       the query as rated
    item_id     the Icecat docid
    item_title  the Icecat title
    brand       the supplier
    description the short description ("" when absent)
    attributes  typed attributes as "Name: value; ..." (product type first, logistics left out,
                at most --max-attributes of them)
    label       class index into (perfect, good, fair, poor) = 3 - rating
    relevance   mean of the three raters' scores 0-3, NaN where they are absent

Rows in the order of rated.csv; Parquet with zstd compression.

It also writes ``catalogue.parquet``: every Icecat product of ``icecat_vectors/*.json.zip`` (the
judged ones and the rest), one row each in archive order, with the item columns above (item_id,
item_title, brand, description, attributes) rendered exactly as in pairs.parquet. It is the
catalogue that ``lrkd.data.pool`` retrieves unlabelled candidates from. Products with neither a
title nor a name are left out (an item needs a title).

    python scripts/build_chorus_icecat.py [--input DIR] [--output FILE] [--catalogue FILE]
        [--only {all,pairs,catalogue}] [--max-attributes 30] [--max-value-chars 80]
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import sys
import zipfile
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lrkd.data.sources import query_id_for  # noqa: E402

GRADES = ("perfect", "good", "fair", "poor")
RATERS = ("agent_1_rating", "agent_2_rating", "agent_3_rating")
PRODUCT_TYPE = "attr_t_product_type"
ATTRIBUTE_PREFIXES = ("attr_t_", "attr_n_", "attr_b_")
# Shipping and packaging data (pallets, cartons, package sizes, customs codes, barcodes) says
# nothing about what a product is; it would crowd the specifications out of the cap.
LOGISTICS = re.compile(r"package|packaging|pallet|carton|master__outer|shipping__inner|intermodal"
                       r"|quantity_per_|harmonized_system|gtin|ean_upc|blister")
LABEL_ALIASES = {"product_colour": "Colour"}
ACRONYMS = {w: w.upper() for w in (
    "ac adf ai ap av bt cd cpu dc dpi dvd dvi eu gps gpu hd hdd hdmi hdr ic id ip ipv4 ipv6 ir lan "
    "lcd led lte mtbf nfc os pc pci poe ppm ram rj sim sd ssd tdp tv uk usb us vga wlan").split()} | {"wxdxh": "WxDxH"}


def humanise_name(key: str) -> str:
    """``attr_n_thermal_design_power__tdp_`` -> ``Thermal design power (TDP)``.

    Icecat names lost their punctuation to underscores. A name ending in "_" ended in a
    parenthesis (its last "__" opened it); an underscore between digits was a point
    ("usb_3_2" -> "USB 3.2"); every other run of underscores becomes a space.
    """
    name = key
    for prefix in ATTRIBUTE_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    if name in LABEL_ALIASES:
        return LABEL_ALIASES[name]
    head, tail = name, ""
    if name.endswith("_") and "__" in name.rstrip("_"):
        head, tail = name.rstrip("_").rsplit("__", 1)

    def words(part: str) -> str:
        part = re.sub(r"(?<=\d)_(?=\d)", ".", part)
        return " ".join(ACRONYMS.get(w, w) for w in re.split(r"_+", part) if w)

    text = words(head) + (f" ({words(tail)})" if words(tail) else "")
    return text[:1].upper() + text[1:]


def format_value(value) -> str:
    """Booleans as yes/no, integral numbers without ".0", text tidied ("a,b" -> "a, b"; ";" -> ",")."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return repr(value)
    text = re.sub(r"\s*;\s*", ", ", str(value).replace("\\n", " "))  # "; " separates attributes
    text = re.sub(r",(?=[A-Za-z])", ", ", text)
    return " ".join(text.split())


def shorten(text: str, max_chars: int) -> str:
    """Cut at a word boundary to at most ``max_chars`` characters, ending in an ellipsis."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    cut = head.rsplit(" ", 1)[0] if " " in head else head[: max_chars - 1]
    return cut.rstrip(" ,;:") + "…"


def attribute_text(product: dict, max_attributes: int = 30, max_value_chars: int = 80) -> str:
    """The typed attributes of a product as ``"Product type: Notebook; Colour: Silver; ..."``."""
    keys = [k for k in product if k.startswith(ATTRIBUTE_PREFIXES) and not LOGISTICS.search(k)]
    keys.sort(key=lambda k: k != PRODUCT_TYPE)  # stable: product type first, then Icecat's order
    parts = []
    for key in keys:
        value = product[key]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        text = format_value(value)
        if text:
            parts.append(f"{humanise_name(key)}: {shorten(text, max_value_chars)}")
        if len(parts) == max_attributes:
            break
    return "; ".join(parts)


def tidy(text) -> str:
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    return " ".join(str(text).replace("\\n", " ").split())


TEXT_FIELDS = ["brand", "description", "attributes"]
ITEM_COLUMNS = ["item_id", "item_title", *TEXT_FIELDS]


def load_products(folder: Path, wanted: set[str] | None = None) -> dict[str, dict]:
    """Icecat products by id (the first record of an id wins), in archive order; with ``wanted``,
    only those ids (all of which must be found)."""
    products: dict[str, dict] = {}
    archives = sorted(glob.glob(str(folder / "icecat_vectors" / "*.json.zip")))
    if not archives:
        raise SystemExit(f"no icecat_vectors/*.json.zip under {folder}")
    for archive in archives:
        with zipfile.ZipFile(archive) as z:
            for member in z.namelist():
                for product in json.loads(z.read(member)):
                    pid = str(product["id"])
                    if wanted is None or pid in wanted:
                        products.setdefault(pid, product)
    missing = sorted((wanted or set()) - set(products))
    if missing:
        raise SystemExit(f"{len(missing)} rated docids have no Icecat product, e.g. {missing[:5]}")
    return products


def item_columns(ids: list[str], items: list[dict], max_attributes: int = 30,
                 max_value_chars: int = 80) -> dict[str, list[str]]:
    """The item columns (ITEM_COLUMNS) of products, the same rendering for pairs and catalogue."""
    return {
        "item_id": list(ids),
        "item_title": [tidy(p.get("title")) or tidy(p.get("name")) for p in items],
        "brand": [tidy(p.get("supplier")) for p in items],
        "description": [tidy(p.get("short_description")) for p in items],
        "attributes": [attribute_text(p, max_attributes, max_value_chars) for p in items],
    }


def build(folder: Path, max_attributes: int = 30, max_value_chars: int = 80) -> pd.DataFrame:
    rated = pd.read_csv(folder / "Broad_Query_Set_rated.csv", dtype={"query": str, "docid": str})
    individual = pd.read_csv(folder / "Broad_Query_Set_individual_ratings.csv",
                             dtype={"query": str, "docid": str}, usecols=["query", "docid", *RATERS])
    joined = rated.merge(individual, on=["query", "docid"], how="left", validate="one_to_one")
    if not joined["rating"].between(0, 3).all():
        raise SystemExit("ratings outside 0-3 in Broad_Query_Set_rated.csv")
    products = load_products(folder, set(joined["docid"]))
    items = [products[d] for d in joined["docid"]]
    df = pd.DataFrame({
        "query_id": [query_id_for(q) for q in joined["query"]],
        "query": [" ".join(q.split()) for q in joined["query"]],
        **item_columns(joined["docid"].tolist(), items, max_attributes, max_value_chars),
        "label": (3 - joined["rating"]).astype("int64").to_numpy(),
        "relevance": joined[list(RATERS)].mean(axis=1, skipna=False).astype("float64").to_numpy(),
    })
    df.attrs["text_fields"] = list(TEXT_FIELDS)
    return df


def build_catalogue(folder: Path, max_attributes: int = 30, max_value_chars: int = 80) -> pd.DataFrame:
    """Every Icecat product as one row of ITEM_COLUMNS, in archive order (titleless ones left out)."""
    products = load_products(folder)
    df = pd.DataFrame(item_columns(list(products), list(products.values()), max_attributes, max_value_chars))
    df = df[df["item_title"] != ""].reset_index(drop=True)
    df.attrs["text_fields"] = list(TEXT_FIELDS)
    return df


def write_parquet(df: pd.DataFrame, path: Path, compression_level: int | None = None) -> None:
    """zstd Parquet, written atomically; ``compression_level`` None is pyarrow's default."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    df.to_parquet(tmp, compression="zstd", compression_level=compression_level, index=False)
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, default=REPO.parent / "shared" / "data" / "chorus_icecat",
                        help="folder with the Chorus CSVs and icecat_vectors/ (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=REPO / "datasets" / "chorus_icecat" / "pairs.parquet",
                        help="Parquet file to write (default: %(default)s)")
    parser.add_argument("--catalogue", type=Path, default=REPO / "datasets" / "chorus_icecat" / "catalogue.parquet",
                        help="Parquet file for the whole product catalogue (default: %(default)s)")
    parser.add_argument("--only", choices=("all", "pairs", "catalogue"), default="all",
                        help="write both files, or only one of them (default: %(default)s)")
    parser.add_argument("--max-attributes", type=int, default=30,
                        help="most attributes kept per product (default: %(default)s)")
    parser.add_argument("--max-value-chars", type=int, default=80,
                        help="longest attribute value kept, cut at a word (default: %(default)s)")
    args = parser.parse_args(argv)

    if args.only in ("all", "catalogue"):
        catalogue = build_catalogue(args.input, args.max_attributes, args.max_value_chars)
        write_parquet(catalogue, args.catalogue, compression_level=19)  # 1.4 MiB instead of 2.3
        print(f"wrote {args.catalogue}: {len(catalogue):,} products, "
              f"{args.catalogue.stat().st_size / 2**20:.1f} MiB")
    if args.only == "catalogue":
        return 0

    df = build(args.input, args.max_attributes, args.max_value_chars)
    write_parquet(df, args.output)

    counts = df["label"].value_counts().sort_index()
    n_attr = df["attributes"].map(lambda s: s.count("; ") + 1 if s else 0)
    print(f"wrote {args.output}")
    print(f"pairs {len(df):,} | queries {df['query_id'].nunique():,} | products {df['item_id'].nunique():,}")
    print("labels " + " | ".join(f"{i} {GRADES[i]} (rating {3 - i}): {counts.get(i, 0):,}" for i in range(4)))
    print(f"with the raters' mean relevance: {int(df['relevance'].notna().sum()):,}")
    print(f"attributes per pair: median {int(n_attr.median())}, none on {int((n_attr == 0).sum()):,}; "
          f"empty description on {int((df['description'] == '').sum()):,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
