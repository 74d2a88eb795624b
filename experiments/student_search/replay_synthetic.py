"""The sampler comparison on a synthetic objective with a planted optimum (the space of
tests/search/test_sampler.py: 6 layer counts x 5 FFN sizes x 3 extractors = 90 configurations, a cost
budget that leaves 69 feasible), many seeds: predictor vs random vs TPE at the same trial counts.

    python experiments/student_search/replay_synthetic.py --seeds 50 --trials 12
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lrkd.search.replay import compare, frame_markdown  # noqa: E402
from lrkd.search.space import grid  # noqa: E402
from tests.search.test_sampler import SPACE, feasible, quality  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=50)
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--startup", type=int, default=4)
    p.add_argument("--out", default=str(Path(__file__).parent / "replay_synthetic.json"))
    args = p.parse_args(argv)
    configs = [c for c in grid(SPACE) if feasible(c)]
    best = max(quality(c) for c in configs)
    table = compare(SPACE, quality, feasible, best, ("predictor", "random", "tpe"), args.trials, args.seeds,
                    args.startup)
    shown = table[table["trials"].isin([4, 8, args.trials])]
    print(f"{len(configs)} feasible of {len(grid(SPACE))} configurations")
    print(frame_markdown(shown))
    Path(args.out).write_text(json.dumps({"feasible": len(configs), "rows": table.to_dict("records")}, indent=2))


if __name__ == "__main__":
    main()
