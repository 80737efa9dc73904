"""Hugging Face Hub ids, online and offline: a clear message in seconds instead of a minute of retries.

transformers and datasets retry an unreachable Hub for about 25-50 s before they give up, with a message about
internet connections. srlm checks first, wherever it hands a hub id to them (`srlm.models.resolve_model_path`, the
hub reader of `srlm.data.formats`):
- with `HF_HUB_OFFLINE` set (1, true, yes, on), a model id must be in the local Hugging Face cache, else it is an
  error that says so at once; a dataset id is read from the cache by `datasets` itself, and a failure names the flag;
- without it, one TCP connection to the Hub's host (`HF_ENDPOINT`, 5 s at most) tells whether it can be reached.
  When it cannot, a cached model is used from the cache (its local snapshot folder), and anything else is an error
  that suggests `HF_HUB_OFFLINE=1`. With a proxy configured (`HTTPS_PROXY`, ...) the probe is skipped: the proxy,
  not a direct connection, decides what is reachable.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from srlm.errors import SrlmError

PROBE_TIMEOUT_SECONDS = 5.0
_TRUE = {"1", "true", "yes", "on"}
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def offline() -> bool:
    """Whether the user asked for no Hub traffic (HF_HUB_OFFLINE, or transformers' older TRANSFORMERS_OFFLINE)."""
    if any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def endpoint() -> str:
    endpoint = os.environ.get("HF_ENDPOINT")
    if endpoint:
        return endpoint.rstrip("/")
    try:
        from huggingface_hub import constants
    except ImportError:
        return "https://huggingface.co"
    return constants.ENDPOINT.rstrip("/")


def unreachable_reason(timeout: float = PROBE_TIMEOUT_SECONDS) -> str | None:
    """None when the Hub's host accepts a TCP connection (or a proxy is in charge); else why it does not."""
    if any(os.environ.get(name) for name in _PROXY_VARS):
        return None
    url = urlparse(endpoint())
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror as exc:
        return f"cannot resolve {host}: {exc.strerror or exc}"
    except TimeoutError:
        return f"no answer from {host}:{port} within {timeout:g} s"
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {exc.strerror or exc}"


def cached_model_dir(repo_id: str) -> str | None:
    """The local snapshot folder of a model in the Hugging Face cache, or None when it is not there."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        return None
    try:
        return snapshot_download(repo_id, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def resolve_hub_model(repo_id: str) -> str:
    """What to hand transformers for a model hub id: the id itself when the Hub can be used (or the model is cached
    and HF_HUB_OFFLINE is set), the cached snapshot folder when the Hub cannot be reached; else a `SrlmError`."""
    if offline():
        if cached_model_dir(repo_id) is None:
            raise SrlmError(
                f"{repo_id}: a Hugging Face Hub id, but HF_HUB_OFFLINE is set and this model is not in the local "
                "cache; unset HF_HUB_OFFLINE to download it (online), or pass a local model directory"
            )
        return repo_id
    reason = unreachable_reason()
    if reason is None:
        return repo_id
    cached = cached_model_dir(repo_id)
    if cached is not None:
        return cached
    raise SrlmError(
        f"{repo_id}: a Hugging Face Hub id, but the Hub at {endpoint()} cannot be reached ({reason}) and the model "
        "is not in the local cache; connect to the network, or pass a local model directory"
    )


def check_hub_dataset(dataset_id: str) -> None:
    """Refuse at once a dataset id when the Hub cannot be reached and HF_HUB_OFFLINE is not set (with it set,
    `datasets` reads its local cache without retrying)."""
    if offline():
        return
    reason = unreachable_reason()
    if reason is not None:
        raise SrlmError(
            f"{dataset_id}: a Hugging Face Hub dataset id, but the Hub at {endpoint()} cannot be reached ({reason}); "
            "connect to the network, set HF_HUB_OFFLINE=1 to read a copy already in the local cache, or pass a "
            "local file"
        )


def offline_dataset_hint(dataset_id: str) -> str:
    """Said after a failed dataset load under HF_HUB_OFFLINE: the likely reason."""
    if not offline():
        return ""
    return ("; HF_HUB_OFFLINE is set, so only a copy in the local cache can be read: unset it to download "
            f"{dataset_id} (online), or pass a local file")


def push_model(model_dir, repo_id: str, *, private: bool = False, token: str | None = None,
               commit_message: str | None = None) -> str:
    """Upload a saved model folder (weights, config, tokenizer and its model card README.md) to the Hub as
    `repo_id` with huggingface_hub's `create_repo` + `upload_folder`; returns the URL of the commit.

    Refused at once, before any upload, when the folder is not a model srlm saved (config.json and safetensors
    weights), when it has no model card (`srlm run` writes one for every model), and when the Hub cannot be
    reached or HF_HUB_OFFLINE is set. Hidden files and trainer leftovers are not uploaded."""
    from pathlib import Path

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file() or not any(model_dir.glob("*.safetensors")):
        raise SrlmError(f"{model_dir}: not a saved model (needs config.json and safetensors weights)")
    if not (model_dir / "README.md").is_file():
        raise SrlmError(f"{model_dir}: no model card (README.md); `srlm run` writes one for every model it saves, "
                        "or `srlm report RUN_DIR` after a run from an older srlm")
    if offline():
        raise SrlmError(f"cannot push {model_dir} to {repo_id}: HF_HUB_OFFLINE is set (unset it to upload)")
    reason = unreachable_reason()
    if reason:
        raise SrlmError(f"cannot push {model_dir} to {repo_id}: the Hub ({endpoint()}) is not reachable: {reason}")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(folder_path=str(model_dir), repo_id=repo_id, repo_type="model",
                             commit_message=commit_message or f"Upload {model_dir.name} (srlm)",
                             ignore_patterns=[".*", "**/.*", "*.partial", "training_args.bin"])
    return str(getattr(info, "commit_url", info))
