"""Run folders: every stage writes its own, named from its config.

A stage's folder ``<root>/<stage>-<key>`` holds:

- ``config.json``: everything that determines the result (the stage's config with seeds and
  model spec, and a fingerprint of every upstream input); ``key`` is a hash of it;
- ``metrics.jsonl``: one JSON object per logged step, ``{"step": s, "namespace/name": v, ...}``;
- ``summary.json``: the final figures. It is written last, atomically, and marks the run done;
- ``manifest.json``: every other file's size and sha256, written just before ``summary.json``;
- artifacts (models via ``save_pretrained``, tables, plots) and, while running, ``checkpoint/``;
- ``tensorboard/`` (with ``report_to="tensorboard"``): the ``metrics.jsonl`` scalars as event files.

Re-running a finished stage with the same config returns the stored result, once its files
match the manifest (sizes always, sha256 of model weights); a corrupted one, or one whose
summary is not JSON, is recomputed with a one-line notice. A changed config hashes to a new
folder; ``force=True`` recomputes. A run that dies midway leaves no summary; the next call
resumes from its last checkpoint if the stage saved one and it is intact, otherwise restarts
clean. Every file is written to a temporary name and renamed into place, so readers never see
half a file. A lock (``fcntl.flock``, released by the OS when a process dies) keeps two
processes out of the same folder; the second is refused with :class:`RunBusyError`.
Where the scalars also go (TensorBoard, trackio, W&B: :mod:`superalign.tracking`) is
``report_to``, which is not part of the key: it does not change the result.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pickle
import shlex
import shutil
import struct
import sys
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from superalign import __version__
from superalign.config import ConfigError
from superalign.tracking import TRACKERS, check_report_to

DEFAULT_ROOT = "runs"
_CHECKPOINT = "checkpoint"
MANIFEST = "manifest.json"
MODEL_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
"""Files whose sha256 is checked on every reuse (model weights); other files by size only."""


class RunBusyError(ConfigError):
    """Another process is running the same stage with the same config (it holds the lock)."""


class RunCorruptedError(ConfigError):
    """An upstream run folder no longer matches its manifest; the message gives the command
    that recomputes it."""


def runs_root(root: str | Path | None = None) -> Path:
    """The folder that holds run folders: ``root``, else ``$SUPERALIGN_RUNS``, else ``./runs``."""
    return Path(root or os.environ.get("SUPERALIGN_RUNS") or DEFAULT_ROOT)


# --- atomic files -------------------------------------------------------------------------------


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never a torn file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` whole (e.g. ``save_pretrained``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def notice(message: str) -> None:
    """One line for the user on stderr, ``superalign: <message>``."""
    print(f"superalign: {message}", file=sys.stderr, flush=True)


# --- hashing -------------------------------------------------------------------------------------


def config_key(obj: Any, length: int = 10) -> str:
    """A short stable hash of a JSON-able object (canonical JSON, sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, default=_json_default, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def fingerprint(path: str | Path) -> str:
    """A content hash of an upstream artifact (a file or folder) for cache keys.

    A finished run folder is identified by its ``config.json`` and ``summary.json`` (which
    determine everything in it); any other folder or file by the bytes of its files.
    """
    path = Path(path)
    if (path / "summary.json").is_file() and (path / "config.json").is_file():
        files = [path / "config.json", path / "summary.json"]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"cannot fingerprint {path}: it does not exist")
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def sha256_file(path: str | Path) -> str:
    """The sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- finished means intact ----------------------------------------------------------------------


def write_manifest(run_dir: str | Path) -> dict[str, Any]:
    """Record every artifact of a finished run (relative path -> size, sha256) in
    ``manifest.json``: all files but ``summary.json``, the manifest itself and hidden ones."""
    run_dir = Path(run_dir)
    files = {
        rel: {"size": f.stat().st_size, "sha256": sha256_file(f)} for f, rel in _artifacts(run_dir)
    }
    manifest = {"files": files}
    atomic_write_json(run_dir / MANIFEST, manifest)
    return manifest


def manifest_problem(run_dir: str | Path, *, hash_models: bool = True) -> str | None:
    """What is wrong with a run folder against its ``manifest.json``, or None when it matches
    (or has no manifest: folders written before manifests existed are accepted as before).
    Sizes are checked for every file, sha256 for model weights (:data:`MODEL_SUFFIXES`)."""
    run_dir = Path(run_dir)
    if not (run_dir / MANIFEST).is_file():
        return None
    try:
        files = read_json(run_dir / MANIFEST)["files"]
        entries = [(rel, int(e["size"]), str(e["sha256"])) for rel, e in files.items()]
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"{MANIFEST} is not a valid manifest"
    for rel, size, sha in entries:
        f = run_dir / rel
        if not f.is_file():
            return f"{rel}: missing"
        actual = f.stat().st_size
        if actual != size:
            return f"{rel}: size {actual}, expected {size}"
        if hash_models and rel.endswith(MODEL_SUFFIXES) and sha256_file(f) != sha:
            return f"{rel}: sha256 differs from the manifest"
    return None


def finished_summary(run_dir: str | Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(summary, None)`` for an intact finished run, ``(None, problem)`` for a corrupted one
    (a summary that is not a JSON object, files that do not match the manifest), and
    ``(None, None)`` for a run that has not finished."""
    run_dir = Path(run_dir)
    if not is_done(run_dir):
        return None, None
    try:
        summary = read_json(run_dir / "summary.json")
    except (ValueError, UnicodeDecodeError):
        return None, "summary.json is not valid JSON"
    if not isinstance(summary, dict):
        return None, "summary.json is not a JSON object"
    problem = manifest_problem(run_dir)
    return (None, problem) if problem else (summary, None)


def checkpoint_problem(ckpt: str | Path) -> str | None:
    """What makes a ``checkpoint/`` folder unusable (a torn or truncated file), or None.

    Cheap structural checks that need no unpickling: ``step.json`` holds a step, every JSON file
    parses, every ``.safetensors`` file is as long as its header says, and every torch file
    (``.pt``, ``.pth``, ``.bin``: zip archives since torch 1.6) passes its CRC checks."""
    ckpt = Path(ckpt)
    try:
        step = read_json(ckpt / "step.json")["step"]
        if not isinstance(step, int):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        return f"{_CHECKPOINT}/step.json does not hold a step"
    for f in sorted(ckpt.rglob("*")):
        if not f.is_file() or any(part.startswith(".") for part in f.relative_to(ckpt).parts):
            continue
        rel = f"{_CHECKPOINT}/{f.relative_to(ckpt)}"
        try:
            if f.suffix == ".json":
                read_json(f)
            elif f.suffix == ".safetensors" and not _safetensors_intact(f):
                return f"{rel}: truncated or not a safetensors file"
            elif f.suffix in (".pt", ".pth", ".bin"):
                with zipfile.ZipFile(f) as z:
                    if z.testzip() is not None:
                        return f"{rel}: damaged (CRC mismatch)"
        except (ValueError, UnicodeDecodeError):
            return f"{rel}: not valid JSON"
        except (zipfile.BadZipFile, OSError, EOFError):
            return f"{rel}: truncated or not a torch file"
    return None


def _safetensors_intact(path: Path) -> bool:
    """A safetensors file is an 8-byte header length, a JSON header whose tensors' data offsets
    end where the file ends, and the data."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > size:
                return False
            header = json.loads(fh.read(n))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    except (struct.error, ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        return False
    return size == 8 + n + max(ends, default=0)


def fix_command(run_dir: str | Path) -> str:
    """The command that recomputes a registered stage's run folder from its ``config.json``."""
    run_dir = Path(run_dir)
    record = read_json(run_dir / "config.json")
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = (
                value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
            )

    walk("", record["config"])
    args = [f"{k}={v}" for k, v in flat.items()]
    return shlex.join(
        ["superalign", record["stage"], "--force", "--runs-dir", str(run_dir.parent), *args]
    )


def _check_inputs(inputs: Mapping[str, str | Path]) -> None:
    """Refuse upstream run folders that no longer match their manifests (sizes only: cheap on
    every call), naming the command that recomputes them."""
    for name, p in sorted(inputs.items()):
        p = Path(p)
        if not (p / MANIFEST).is_file() or not is_done(p):
            continue
        problem = manifest_problem(p, hash_models=False)
        if problem:
            try:
                how = f"recompute it with: {fix_command(p)}"
            except (OSError, ValueError, KeyError, TypeError):
                how = "rerun the command that made it with --force"
            raise RunCorruptedError(f"input {name}: run {p} is corrupted ({problem}); {how}")


def _artifacts(run_dir: Path) -> Iterator[tuple[Path, str]]:
    for f in sorted(run_dir.rglob("*")):
        rel = f.relative_to(run_dir)
        if f.is_file() and not any(part.startswith(".") for part in rel.parts):
            if str(rel) not in ("summary.json", MANIFEST):
                yield f, rel.as_posix()


# --- runs ----------------------------------------------------------------------------------------


@dataclass
class Run:
    """A handle on one stage's folder, given to the stage function while it runs."""

    dir: Path
    stage: str
    config: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)
    resumed_from: int | None = None
    report_to: str = "none"
    """Where :meth:`log` also writes (see :data:`superalign.tracking.REPORT_TO`); not part of the key."""
    _tracker: Any = field(default=None, repr=False, compare=False)

    def path(self, name: str) -> Path:
        """Path of an artifact inside the run folder."""
        return self.dir / name

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Append one line of namespaced scalars (``"loss/train": 2.1``) for ``step``."""
        row = {"step": int(step), "time": round(time.time(), 3)}
        row.update({k: _scalar(v) for k, v in metrics.items()})
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        if self.report_to != "none":
            if self._tracker is None:
                self._tracker = TRACKERS[self.report_to](self)
            scalars = {k: float(v) for k, v in row.items() if _is_number(v) and k != "time"}
            self._tracker.log(int(step), {k: v for k, v in scalars.items() if k != "step"})

    def close_tracker(self) -> None:
        """Flush and close the tracker, if :meth:`log` opened one."""
        if self._tracker is not None:
            self._tracker.close()
            self._tracker = None

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.dir)

    def save_checkpoint(self, state: dict[str, Any], step: int) -> None:
        """Atomically store a resumable state (anything ``torch.save`` takes) at ``step``."""
        import torch

        with atomic_dir(self.dir / _CHECKPOINT) as tmp:
            torch.save(state, tmp / "state.pt")
            atomic_write_json(tmp / "step.json", {"step": int(step)})

    def resume_step(self) -> int | None:
        """The step of the last checkpoint (``checkpoint/step.json``), or None. Drops metrics
        logged after it and records it as ``resumed_from``. Stages whose trainer writes its own
        checkpoints into ``checkpoint/`` (TRL) mark them with ``step.json`` and call this."""
        marker = self.dir / _CHECKPOINT / "step.json"
        if not marker.is_file():
            return None
        step = read_json(marker)["step"]
        rows = [r for r in read_metrics(self.dir) if r["step"] <= step]
        atomic_write_text(self.dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        self.resumed_from = step
        return step

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint's state, or None. Drops metrics logged after it."""
        if self.resume_step() is None:
            return None
        import torch

        try:
            return torch.load(self.dir / _CHECKPOINT / "state.pt", weights_only=False)
        except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:
            notice(
                f"run {self.dir}: checkpoint unreadable ({type(e).__name__}); "
                "discarding it and restarting clean"
            )
            shutil.rmtree(self.dir / _CHECKPOINT, ignore_errors=True)
            atomic_write_text(self.dir / "metrics.jsonl", "")
            self.resumed_from = None
            return None


@dataclass
class StageResult:
    """What :func:`run_stage` returns: the folder, its summary, and whether it was reused."""

    dir: Path
    summary: dict[str, Any]
    reused: bool


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Rows of ``metrics.jsonl``; a torn last line (a process killed mid-write) is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def is_done(run_dir: str | Path) -> bool:
    return (Path(run_dir) / "summary.json").is_file()


def run_dir_for(
    stage: str,
    config: Mapping[str, Any],
    inputs: Mapping[str, str | Path] = (),
    root: str | Path | None = None,
) -> Path:
    """The folder a stage with this config and these inputs writes to."""
    return (
        runs_root(root)
        / f"{stage}-{config_key(_key_material(stage, config, _fingerprints(inputs)))}"
    )


def run_stage(
    stage: str,
    config: Mapping[str, Any],
    fn: Callable[[Run], Mapping[str, Any]],
    *,
    inputs: Mapping[str, str | Path] | None = None,
    root: str | Path | None = None,
    force: bool = False,
    report_to: str | None = None,
) -> StageResult:
    """Run ``fn(run) -> summary`` in the stage's folder, or reuse a finished, intact result.

    ``config`` must be JSON-able and hold everything that determines the result; ``inputs``
    names upstream artifacts (run folders, model folders) whose fingerprints join the key.
    ``report_to`` (:data:`superalign.tracking.REPORT_TO`; None reads ``$SUPERALIGN_REPORT_TO``) is where
    :meth:`Run.log` also sends scalars; it is not part of the key.
    """
    report_to = check_report_to(report_to)
    _check_inputs(inputs or {})
    fps = _fingerprints(inputs or {})
    material = _key_material(stage, config, fps)
    run_dir = runs_root(root) / f"{stage}-{config_key(material)}"
    rank, world = process_rank()
    barrier = _barrier if world > 1 else lambda: None
    if rank > 0:
        return _run_helper_rank(run_dir, rank, stage, config, fn, inputs, force, barrier)
    if not force:
        summary, problem = finished_summary(run_dir)
        if summary is not None:
            barrier()
            return StageResult(run_dir, summary, reused=True)
        if problem:
            notice(f"run {run_dir} is corrupted ({problem}); recomputing")
    run_dir.mkdir(parents=True, exist_ok=True)
    with _lock(run_dir):
        summary, problem = (None, None) if force else finished_summary(run_dir)
        if summary is not None:  # finished by another process while we waited
            barrier()
            return StageResult(run_dir, summary, reused=True)
        if force or problem or not _resumable(run_dir):
            _clear(run_dir)  # nothing (intact) to resume from: restart clean
        else:
            _clear_leftovers(run_dir)
        record = {
            **material,
            "inputs": {k: {"path": str(inputs[k]), "fingerprint": v} for k, v in fps.items()},
            "superalign_version": __version__,
        }
        atomic_write_json(run_dir / "config.json", record)
        if world > 1:
            (run_dir / _CHECKPOINT).mkdir(exist_ok=True)  # the other ranks link to it
        run = Run(
            run_dir,
            stage,
            dict(config),
            inputs={k: str(v) for k, v in (inputs or {}).items()},
            report_to=report_to,
        )
        barrier()  # the folder is ready
        start = time.time()
        try:
            summary = dict(fn(run))
        finally:
            run.close_tracker()
        summary.setdefault("wall_seconds", round(time.time() - start, 2))
        if run.resumed_from is not None:
            summary.setdefault("resumed_from_step", run.resumed_from)
        barrier()  # every rank is done with checkpoint/
        shutil.rmtree(run_dir / _CHECKPOINT, ignore_errors=True)
        write_manifest(run_dir)
        atomic_write_json(run_dir / "summary.json", summary)  # last: the run is done
    return StageResult(run_dir, summary, reused=False)


def process_rank() -> tuple[int, int]:
    """``(rank, world size)`` of this process under ``torchrun`` / ``accelerate launch`` (their
    ``RANK`` and ``WORLD_SIZE``); ``(0, 1)`` for a single process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _run_helper_rank(
    run_dir: Path,
    rank: int,
    stage: str,
    config: Mapping[str, Any],
    fn: Callable[[Run], Mapping[str, Any]],
    inputs: Mapping[str, str | Path] | None,
    force: bool,
    barrier: Callable[[], None],
) -> StageResult:
    """Rank ``rank`` > 0: run ``fn`` in a scratch folder that shares rank 0's ``checkpoint/``."""
    barrier()  # rank 0 has prepared the folder (or found it finished)
    if is_done(run_dir) and not force:
        return StageResult(run_dir, read_json(run_dir / "summary.json"), reused=True)
    scratch = run_dir.with_name(f".{run_dir.name}.rank{rank}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    (scratch / _CHECKPOINT).symlink_to((run_dir / _CHECKPOINT).resolve(), target_is_directory=True)
    run = Run(scratch, stage, dict(config), inputs={k: str(v) for k, v in (inputs or {}).items()})
    try:
        summary = dict(fn(run))
        barrier()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return StageResult(run_dir, summary, reused=False)


def _barrier() -> None:
    """Wait for every process of the launch, through accelerate's process group (initialised here
    as the trainers will: gloo on CPU, the accelerator's backend otherwise)."""
    import torch
    from accelerate import PartialState

    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    PartialState(cpu=cpu or not torch.cuda.is_available()).wait_for_everyone()


# ---------------------------------------------------------------------------------------------


def _key_material(stage: str, config: Mapping[str, Any], fps: Mapping[str, str]) -> dict[str, Any]:
    return {"stage": stage, "config": dict(config), "input_fingerprints": dict(fps)}


def _fingerprints(inputs: Mapping[str, str | Path]) -> dict[str, str]:
    return {name: fingerprint(p) for name, p in sorted(dict(inputs).items())}


@contextlib.contextmanager
def _lock(run_dir: Path) -> Iterator[None]:
    with open(run_dir / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "?"
            raise RunBusyError(
                f"another process (pid {pid}) is running this stage with this config in "
                f"{run_dir}; wait for it to finish (its result will then be reused), or stop it "
                f"(kill {pid}) and run again"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _resumable(run_dir: Path) -> bool:
    """Whether ``checkpoint/`` holds an intact checkpoint; a damaged one gets a notice."""
    if not (run_dir / _CHECKPOINT / "step.json").is_file():
        return False
    problem = checkpoint_problem(run_dir / _CHECKPOINT)
    if problem:
        notice(f"run {run_dir}: damaged checkpoint ({problem}); discarding it, restarting clean")
    return problem is None


def _clear_leftovers(run_dir: Path) -> None:
    """Remove temporary files and folders a killed process left (``.name.tmp-PID``,
    ``.name.old-PID``) before resuming in ``run_dir``."""
    for p in list(run_dir.rglob(".*")):
        if (".tmp-" in p.name or ".old-" in p.name) and p.exists():
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def _clear(run_dir: Path) -> None:
    for p in run_dir.iterdir():
        if p.name == ".lock":
            continue
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _scalar(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float):
        return round(v, 6)
    return v


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"{type(o).__name__} is not JSON-serializable")


_RAISE = object()


def lookup(summary: Mapping[str, Any], path: str, default: Any = _RAISE) -> Any:
    """``summary[path]``, else ``path`` read as dots through nested mappings and list indices
    (``results.assisted.all.accuracy``, ``table.0.reward/gold``): the one way a summary figure is
    addressed (the report, the demo, the gate's audits). Missing: ``default``, or ``KeyError``
    when none is given."""
    if path in summary:
        return summary[path]
    node: Any = summary
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif (
            isinstance(node, list)
            and part.lstrip("-").isdigit()
            and -len(node) <= int(part) < len(node)
        ):
            node = node[int(part)]
        elif default is _RAISE:
            raise KeyError(path)
        else:
            return default
    return node
