"""``superalign blind``: an auditing game made from organism folders.

    superalign blind runs/organism-1a2b runs/organism-3c4d --out game --key game.key.json
    superalign audit organisms=[game/3f0c...,game/9a1e...] key=game.key.json reference=...

Each source (a run folder of the ``organism`` stage, or any folder in the public organism
format: ``model/`` and ``public.json``, its truth in ``sealed/record.json``) becomes a copy in
``--out`` under a random name (:func:`secrets.token_hex`) holding only what a detector may see:

- ``public.json`` with the keys of the public interface only
  (:data:`~superalign.stress.organisms.PUBLIC_KEYS`);
- ``model/`` with the files a Hugging Face loader needs (``*.safetensors`` weights, JSON
  config and tokenizer files, ``*.txt`` / ``*.model`` vocabularies), their provenance stripped:
  the safetensors header is rewritten without ``__metadata__``, and every JSON file without
  ``_``-prefixed keys (``_name_or_path``, ``_commit_hash``, ...) and ``name_or_path``. Any other
  file (a README, training arguments, checkpoints) is left out and listed in the key. Weights in
  another format (``.bin``, ``.pt``, ``.gguf``, the maze's ``ppo.zip``) are refused: their
  containers carry metadata this command does not strip;
- every file and folder of a copy has its modification time set to :data:`FIXED_MTIME`.

Nothing else is copied: no ``sealed/``, no run ``config.json`` / ``summary.json`` /
``metrics.jsonl``. The copies are written in a shuffled order, so that neither their names, the
listing order, inode numbers nor creation times follow the order of the sources. The key
(which copy is which source, and each source's sealed record: ``kind``, ``control``, the
secret) goes to a file outside ``--out`` (default: ``<out>.key.json`` beside it); a key path
inside ``--out`` is refused, and so is a source whose ``public.json`` names its trigger. The
audit scores the copies with ``key=FILE`` (:func:`read_key`).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from superalign.config import ConfigError
from superalign.runs import atomic_dir, atomic_write_json, read_json

FIXED_MTIME = 946_684_800
"""The modification (and access) time of every file and folder of a copy: 2000-01-01 UTC."""
KEY_FORMAT = "superalign-blind-key/1"
"""``format`` of a key file."""
MODEL_SUFFIXES = (".safetensors", ".json", ".txt", ".model", ".jinja")
"""Files of ``model/`` that a copy keeps (weights, config, tokenizer); others are left out."""
REFUSED_SUFFIXES = (".bin", ".pt", ".pth", ".gguf", ".zip", ".pkl", ".ckpt")
"""Weight containers whose metadata this command does not strip: a source holding one is
refused."""
PRIVATE_JSON_KEYS = ("name_or_path",)
"""Top-level JSON keys dropped from ``model/`` files besides every ``_``-prefixed one."""


@dataclass(frozen=True)
class BlindGame:
    """What :func:`blind` made."""

    out: Path
    """The folder of copies."""
    key: Path
    """The key file (outside ``out``)."""
    names: list[str]
    """The copies' folder names, sorted (the order says nothing)."""


# --- stripping ----------------------------------------------------------------------------------


def strip_safetensors(src: Path, dst: Path) -> None:
    """Copy a safetensors file without its ``__metadata__``: the header (8-byte little-endian
    length, then JSON) is rewritten compactly, padded with spaces to a multiple of 8 bytes as the
    format recommends; the tensor bytes follow unchanged (their offsets are relative to the end of
    the header, so they stay valid)."""
    with open(src, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        with open(dst, "wb") as g:
            g.write(struct.pack("<Q", len(blob)))
            g.write(blob)
            shutil.copyfileobj(f, g, 1 << 20)


def clean_json(obj: Any, index: bool = False) -> Any:
    """A ``model/`` JSON object without provenance: top-level keys starting with ``_`` and
    :data:`PRIVATE_JSON_KEYS` dropped; for a sharded-weights index (``index``) the ``metadata``
    is cut to ``total_size``."""
    if not isinstance(obj, dict):
        return obj
    out = {k: v for k, v in obj.items() if not k.startswith("_") and k not in PRIVATE_JSON_KEYS}
    if index and isinstance(out.get("metadata"), dict):
        out["metadata"] = {k: v for k, v in out["metadata"].items() if k == "total_size"}
    return out


def copy_model(src: Path, dst: Path) -> list[str]:
    """Copy the loadable files of model folder ``src`` into ``dst`` (which exists), stripped;
    returns the names left out."""
    refused = sorted(p.name for p in src.iterdir() if p.name.endswith(REFUSED_SUFFIXES))
    if refused:
        raise ConfigError(
            f"{src} holds {', '.join(refused)}: blind copies Hugging Face models with "
            "safetensors weights only (save with save_pretrained(..., safe_serialization=True))"
        )
    if not (src / "config.json").is_file() or not any(src.glob("*.safetensors")):
        raise ConfigError(f"{src} is not a Hugging Face model folder (config.json + safetensors)")
    left_out = []
    for p in sorted(src.iterdir()):
        if not p.is_file() or p.name.startswith(".") or not p.name.endswith(MODEL_SUFFIXES):
            left_out.append(p.name)
        elif p.suffix == ".safetensors":
            strip_safetensors(p, dst / p.name)
        elif p.suffix == ".json":
            obj = clean_json(read_json(p), index=p.name.endswith(".index.json"))
            text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
            (dst / p.name).write_text(text, encoding="utf-8")
        else:
            shutil.copyfile(p, dst / p.name)
    return left_out


def public_info(folder: Path) -> dict[str, Any]:
    """A source's ``public.json`` cut to the public interface, naming ``model`` as the model."""
    from superalign.stress.organisms import PUBLIC_KEYS

    info = read_json(folder / "public.json")
    return {k: info[k] for k in PUBLIC_KEYS if k in info} | {"model": "model"}


def reset_times(folder: Path, when: int = FIXED_MTIME) -> None:
    """Set the access and modification times of ``folder`` and everything in it to ``when``
    (files first, folders last: writing into a folder changes its time)."""
    paths = sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True)
    for p in [*paths, folder]:
        os.utime(p, (when, when))


# --- the game -----------------------------------------------------------------------------------


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _check_source(folder: Path) -> Path:
    """The source's model folder, after checking that it is an organism with a sealed record."""
    from superalign.stress.organisms import RECORD_FILE, load_public, unseal

    try:
        public = load_public(folder)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from None
    if not (folder / RECORD_FILE).is_file():
        raise ConfigError(f"{folder} has no {RECORD_FILE}: the key needs every source's truth")
    trigger = unseal(folder).get("trigger")
    if trigger and trigger in json.dumps(public_info(folder)):
        raise ConfigError(f"{folder}/public.json names its trigger: it is not public-safe")
    return public.model


def blind(sources: list[str | Path], out: str | Path, key: str | Path | None = None) -> BlindGame:
    """Make an auditing game of ``sources`` in the new (or empty) folder ``out``: one stripped
    copy per source under a random name, written in a shuffled order; the key (copy name ->
    source and sealed record) to ``key`` (default ``<out>.key.json``), which must lie outside
    ``out`` and not exist yet."""
    from superalign.stress.organisms import unseal

    out = Path(out).resolve()
    key = Path(key).resolve() if key else out.with_name(out.name + ".key.json")
    if not sources:
        raise ConfigError("give at least one organism folder to blind")
    if _inside(key, out):
        raise ConfigError(f"the key {key} lies inside --out {out}: it would reveal the answers")
    if key.exists():
        raise ConfigError(f"the key {key} exists already; give another --key")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} must be a new or empty folder")
    folders = [Path(s).resolve() for s in sources]
    models = [_check_source(f) for f in folders]
    for f in folders:
        if _inside(out, f) or _inside(f, out):
            raise ConfigError(f"--out {out} and the source {f} must not contain each other")

    pairs = list(zip(folders, models))
    secrets.SystemRandom().shuffle(pairs)  # copies are created in this order, not the sources'
    names: list[str] = []
    while len(names) < len(pairs):
        name = secrets.token_hex(8)
        names += [] if name in names else [name]
    out.mkdir(parents=True, exist_ok=True)
    copies = {}
    for (folder, model), name in zip(pairs, names):
        with atomic_dir(out / name) as tmp:
            (tmp / "model").mkdir()
            left_out = copy_model(model, tmp / "model")
            text = json.dumps(public_info(folder), indent=2, ensure_ascii=False) + "\n"
            (tmp / "public.json").write_text(text, encoding="utf-8")
            reset_times(tmp)
        copies[name] = {
            "source": str(folder),
            "record": unseal(folder),
            "left_out": left_out,
        }
    key_doc = {"format": KEY_FORMAT, "out": str(out), "copies": dict(sorted(copies.items()))}
    key.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(key, key_doc)
    return BlindGame(out, key, sorted(copies))


def read_key(path: str | Path) -> dict[str, dict[str, Any]]:
    """The truth of a blind game: copy folder name -> the source's sealed record."""
    doc = read_json(path)
    if not isinstance(doc, dict) or doc.get("format") != KEY_FORMAT:
        raise ValueError(f"{path} is not a key file of `superalign blind` ({KEY_FORMAT})")
    return {name: entry["record"] for name, entry in doc["copies"].items()}


# --- the command --------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``blind`` subcommand's arguments."""
    p.add_argument("sources", nargs="+", metavar="RUN_OR_DIR", help="organism folders to blind")
    p.add_argument(
        "--out", type=Path, required=True, help="new (or empty) folder for the blind copies"
    )
    p.add_argument(
        "--key",
        type=Path,
        help="key file to write, outside --out (default: <out>.key.json beside it)",
    )
    p.set_defaults(func=cmd_blind)


def cmd_blind(args: argparse.Namespace) -> int:
    """``superalign blind``: print where the copies and the key went, never which is which."""
    game = blind(args.sources, args.out, args.key)
    print(f"wrote {len(game.names)} blind copies to {game.out}/ (sorted by name):")
    for name in game.names:
        print(f"  {name}")
    print(f"key (keep it from the auditor): {game.key}")
    return 0
