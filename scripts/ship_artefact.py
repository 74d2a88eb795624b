"""Copy a finished pipeline's annotation artefact into the repository with a provenance file.

    python scripts/ship_artefact.py --work-dir artefacts/chorus_icecat/smollm2-135m-instruct \
        --target datasets/chorus_icecat/annotations --command "python train.py experiment=pipeline"

Copies ``<work-dir>/annotations`` (manifest, zstd parquet text, fp16 vectors) to ``--target`` and
writes ``<target>/PROVENANCE.json``: the command, the git commit, each teacher stage's wall time,
fingerprint and metrics (from its ``stage.json``), the generation statistics, and the resolved
config of the run (``--config``: the pipeline run's ``.hydra/config.yaml``, when given).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

STAGES = {"teacher_generate": "generations", "teacher_sft": "sft", "teacher_dpo": "dpo",
          "teacher_annotate": "annotations"}


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def unrecorded_annotation(folder: Path) -> dict:
    """An annotation whose artefact was finalized but whose stage.json was never written (the run
    was stopped during the optional test-split evaluation that follows): its wall time is the
    manifest's creation to its last write."""
    import datetime as dt

    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if not manifest.get("complete"):
        raise SystemExit(f"{folder} holds an unfinished artefact (manifest 'complete' is false)")
    created = dt.datetime.fromisoformat(manifest["created_at"])
    finished = dt.datetime.fromtimestamp(manifest_path.stat().st_mtime, dt.timezone.utc)
    return {"wall_time_s": round((finished - created).total_seconds(), 1),
            "finished_at": finished.isoformat(timespec="seconds"), "fingerprint": manifest.get("extra", {}).get(
                "stage_fingerprint"), "metrics": {"pairs": manifest.get("num_rows")},
            "note": "no stage.json: the run was stopped during the stage's test-split evaluation, after the "
                    "artefact was finalized; wall time = manifest created_at to its last write"}


def provenance(work_dir: Path, command: str, config: Path | None, root: Path) -> dict:
    stages = {}
    for stage, folder in STAGES.items():
        record_path = work_dir / folder / "stage.json"
        if not record_path.is_file() and stage == "teacher_annotate":
            stages[stage] = unrecorded_annotation(work_dir / folder)
            continue
        if not record_path.is_file():
            raise SystemExit(f"{record_path} is missing: the {stage} stage has not finished")
        record = json.loads(record_path.read_text())
        stages[stage] = {"wall_time_s": record.get("wall_time_s"), "finished_at": record.get("finished_at"),
                         "fingerprint": record.get("fingerprint"), "metrics": record.get("metrics")}
    out = {"command": command, "commit": git_commit(root), "stages": stages,
           "generation_stats": json.loads((work_dir / "generations" / "stats.json").read_text())}
    if config is not None:
        import yaml

        out["config"] = yaml.safe_load(config.read_text())
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, required=True, help="the pipeline's stage.work_dir")
    parser.add_argument("--target", type=Path, required=True, help="where the artefact goes in the repository")
    parser.add_argument("--command", required=True, help="the command that ran the pipeline")
    parser.add_argument("--config", type=Path, help="the run's .hydra/config.yaml")
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parents[1]
    record = provenance(args.work_dir, args.command, args.config, root)
    if args.target.exists():
        shutil.rmtree(args.target)
    shutil.copytree(args.work_dir / "annotations", args.target,
                    ignore=shutil.ignore_patterns("*.tmp", ".*", "stage.json"))
    (args.target / "PROVENANCE.json").write_text(json.dumps(record, indent=2, sort_keys=False, default=str) + "\n")
    size = sum(p.stat().st_size for p in args.target.rglob("*") if p.is_file())
    print(f"shipped {args.work_dir / 'annotations'} -> {args.target} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
