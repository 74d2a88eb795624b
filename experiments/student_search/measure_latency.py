"""Time a grid of pruned MiniLM students into the architecture search's latency table (the same file
`hparams_search=student_arch` reuses: <paths.cache_dir>/latency_tables/<runtime>-<hash>.csv), and copy
it here. No training: the weights do not change the time.

    python experiments/student_search/measure_latency.py [--runtime eager|onnx-int8] [--batch-sizes 1,32] \
        [--layers 1,2,3,4,6] [--ffn 384,768,1536] [--max-length 64] [--extractors none] [overrides ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from optuna.distributions import CategoricalDistribution  # noqa: E402

from lrkd.search.study import ArchitectureSearch  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runtime", default="eager")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-sizes", default="1")
    p.add_argument("--layers", default="1,2,3,4,6")
    p.add_argument("--ffn", default="384,768,1536")
    p.add_argument("--max-length", default="64")
    p.add_argument("--extractors", default="none")
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=str(Path(__file__).parent / "latency_table.csv"))
    args, overrides = p.parse_known_args(argv)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=student_arch", *overrides], return_hydra_config=True)
    space = {"student.prune.num_layers": CategoricalDistribution(args.layers.split(",")),
             "student.prune.intermediate_size": CategoricalDistribution(args.ffn.split(",")),
             "data.max_length": CategoricalDistribution(args.max_length.split(",")),
             "extractor": CategoricalDistribution(args.extractors.split(","))}
    search = ArchitectureSearch(runtime=args.runtime, threads=args.threads,
                                batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
                                iterations=args.iterations, rounds=args.rounds,
                                table_dir=str(cfg.search.table_dir))
    table = search.prepare(space, cfg)
    frame = table.frame()
    names = {a.name for a in search.archs} | {search.reference.name}
    from lrkd.search.latency_table import Architecture

    keep = [Architecture.from_row(r).name in names and r["runtime"] == args.runtime for r in frame.to_dict("records")]
    out = Path(args.out)
    frame[keep].to_csv(out, index=False)
    print(f"{table.path} -> {out}")
    print(frame[keep][["num_layers", "intermediate_size", "max_length", "extractor", "batch", "median_ms", "ratio",
                       "latency_ms", "params"]].to_string(index=False))


if __name__ == "__main__":
    main()
