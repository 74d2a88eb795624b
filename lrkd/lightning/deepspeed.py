"""A DeepSpeed ZeRO checkpoint (a directory, one shard per rank) -> one fp32 Lightning checkpoint file.

    lrkd zero-to-fp32 <checkpoint dir> [<output file>] [--tag TAG]

The output (default: ``<checkpoint dir without .ckpt>.fp32.ckpt`` next to it) is what
``StudentModule.load_from_checkpoint(path, weights_only=True)``, ``lrkd predict``,
``lrkd export`` and ``data``/serving code read: the consolidated fp32 ``state_dict`` plus
the run's Lightning state (``hyper_parameters`` with the student's ``data_spec``, epoch,
global_step, callbacks). The consolidation is Lightning's own
(``lightning.pytorch.utilities.deepspeed.convert_zero_checkpoint_to_fp32_state_dict``, itself
DeepSpeed's ``zero_to_fp32``); this module only drops DeepSpeed's bookkeeping (parameter shapes,
the DeepSpeed config, ...) so that the file loads with ``weights_only=True``, and writes it atomically.

Runs on a CPU, without the GPUs that wrote the checkpoint; needs ``deepspeed`` installed
(``DS_BUILD_OPS=0 pip install -e ".[deepspeed]"``; ``make install`` does it).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from lrkd.utils import atomic_path

# what DeepSpeed adds to the client state of a checkpoint; none of it is needed to load the weights
DEEPSPEED_KEYS = ("buffer_names", "param_shapes", "frozen_param_shapes", "shared_params", "frozen_param_fragments",
                  "data_sampler", "random_ltd", "sparse_tensor_module_names", "global_samples", "ds_config",
                  "ds_version", "module", "optimizer", "lr_scheduler", "csr_tensor_module_names", "skipped_steps",
                  "global_steps", "dp_world_size", "mp_world_size")


def is_zero_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DeepSpeed checkpoint directory (it has a ``latest`` tag file)."""
    path = Path(path)
    return path.is_dir() and (path / "latest").is_file()


def default_output(checkpoint_dir: str | os.PathLike) -> Path:
    """``.../best-epoch3-step120.ckpt/`` -> ``.../best-epoch3-step120.fp32.ckpt``."""
    path = Path(checkpoint_dir)
    stem = path.name[:-len(".ckpt")] if path.name.endswith(".ckpt") else path.name
    return path.with_name(f"{stem}.fp32.ckpt")


def convert(checkpoint_dir: str | os.PathLike, output_file: str | os.PathLike | None = None,
            tag: str | None = None) -> Path:
    """Consolidate ``checkpoint_dir`` into one fp32 checkpoint file; returns its path."""
    # Lightning's converter imports DeepSpeed (the deepspeed extra): only when converting
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    src = Path(checkpoint_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a DeepSpeed checkpoint directory (a ZeRO checkpoint is a "
                                f"folder with a 'latest' file and one shard per rank)")
    out = Path(output_file) if output_file is not None else default_output(src)
    with atomic_path(out) as tmp:
        state = convert_zero_checkpoint_to_fp32_state_dict(str(src), str(tmp), tag=tag)
        state = {k: v for k, v in state.items() if k not in DEEPSPEED_KEYS}
        torch.save(state, tmp)
        torch.load(tmp, map_location="cpu", weights_only=True)  # what its readers will do
    return out


def main(argv: list[str] | None = None, prog: str = "lrkd zero-to-fp32") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint_dir", help="a DeepSpeed checkpoint directory (e.g. checkpoints/last.ckpt/)")
    parser.add_argument("output_file", nargs="?", default=None,
                        help="the fp32 checkpoint to write (default: <checkpoint dir>.fp32.ckpt)")
    parser.add_argument("--tag", default=None, help="checkpoint tag (default: the one in <dir>/latest)")
    args = parser.parse_args(argv)
    out = convert(args.checkpoint_dir, args.output_file, tag=args.tag)
    print(out)
    return 0


__all__ = ["convert", "is_zero_checkpoint", "default_output", "main", "DEEPSPEED_KEYS"]


if __name__ == "__main__":
    sys.exit(main())
