"""Typed dataclass configs: YAML files, ``key.sub=value`` overrides, clear errors.

A config is a plain ``@dataclass`` with a docstring under each field (read by ``--help``),
``Literal`` for fixed choices and ``__post_init__`` checks that raise :class:`ConfigError`
with a sentence a user understands. Loading goes dataclass defaults < YAML < CLI overrides::

    cfg = load_config(PretrainConfig, "pretrain.yaml", ["lr=3e-4", "model.size=small"])

An unknown or mistyped key fails with a message that names it and the closest valid key.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or key is invalid; the message says which and how to fix it."""


def check_at_least(cfg: Any, minimum: int, *names: str) -> None:
    """Raise :class:`ConfigError` naming the first of ``cfg``'s fields ``names`` that is below
    ``minimum`` (a config's ``__post_init__`` check on counts and sizes)."""
    for name in names:
        value = getattr(cfg, name)
        if value < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, not {value}")


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Build ``cls`` from its defaults, an optional YAML file, then ``key.sub=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = read_yaml(path) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{path} must hold a mapping of config keys, not {type(loaded).__name__}"
            )
        data = loaded
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. lr=3e-4)")
        _set_dotted(data, key, value)
    return from_dict(cls, data)


def read_yaml(path: str | Path) -> Any:
    """Parse the YAML file ``path``; a file that is not valid YAML raises :class:`ConfigError`
    as one line, ``FILE:LINE: problem`` (the parser's own message, without its traceback)."""
    path = Path(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text (UTF-8) file") from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = " ".join(str(p).strip() for p in (e.context, e.problem) if p)
        raise ConfigError(f"{where}: invalid YAML: {problem or type(e).__name__}") from None
    except (yaml.YAMLError, ValueError, TypeError) as e:  # a bad tag: '!!int x' is a ValueError
        raise ConfigError(f"{path}: invalid YAML: {_first_line(e)}") from None


def one_line(error: BaseException) -> str:
    """``error``'s message on one line (its lines joined), for a CLI's ``error:`` line."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (possibly nested) dict, coercing and checking every value."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or cls.__name__} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            _unknown_key(cls, key, prefix)
    kwargs = {
        name: _coerce(data[name], hints[name], prefix + name) for name in fields if name in data
    }
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{cls.__name__}: {e}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config (nested dataclasses become dicts, tuples lists)."""
    return _jsonable(dataclasses.asdict(cfg))


def valid_keys(cls: type) -> list[str]:
    """All dotted keys ``cls`` accepts, nested dataclasses included."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        keys.append(f.name)
        sub = _dataclass_in(hints[f.name])
        if sub is not None:
            keys += [f"{f.name}.{k}" for k in valid_keys(sub)]
    return keys


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (CleanRL style), by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe(cls: type, prefix: str = "") -> str:
    """Human-readable list of fields: ``key (type, default): doc`` for ``--help``."""
    lines = []
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        sub = _dataclass_in(tp)
        if sub is not None:
            lines.append(f"  {prefix}{f.name}.*: {docs.get(f.name, '')}")
            lines.append(describe(sub, prefix + f.name + "."))
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "required"
        lines.append(f"  {prefix}{f.name} ({_type_name(tp)}, default {default})")
        if f.name in docs:
            lines.append(
                textwrap.fill(docs[f.name], 96, initial_indent=" " * 6, subsequent_indent=" " * 6)
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    if not all(key.split(".")):
        raise ConfigError(f"override key {key!r} has an empty part between dots")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {key}: {p} is not a group of keys")
    node[leaf] = value


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _yaml_value(value: str, key: str, what: str) -> Any:
    """A CLI string read as YAML (a list or mapping); invalid YAML is a :class:`ConfigError`."""
    try:
        return yaml.safe_load(value)
    except (yaml.YAMLError, ValueError, TypeError) as e:
        raise ConfigError(f"{key} must be {what}, not {value!r} ({_first_line(e)})") from None


def _unknown_key(cls: type, key: str, prefix: str = "") -> typing.NoReturn:
    keys = valid_keys(cls)
    close = difflib.get_close_matches(str(key), keys, n=1, cutoff=0.5)  # the shared prefix aside
    hint = (
        f" Did you mean '{prefix}{close[0]}'?"
        if close
        else f" Valid keys: {', '.join(prefix + k for k in keys)}."
    )
    raise ConfigError(f"unknown config key '{prefix}{key}' for {cls.__name__}.{hint}")


def _dataclass_in(tp: Any) -> type | None:
    if dataclasses.is_dataclass(tp):
        return tp
    if _is_union(tp):
        for arg in typing.get_args(tp):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Turn ``value`` (from YAML or a CLI string) into type ``tp`` or raise a clear error."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:  # untyped (e.g. the values of a dict[str, Any]): read a CLI string as YAML
        if not isinstance(value, str):
            return value
        try:
            return yaml.safe_load(value)
        except (yaml.YAMLError, ValueError, TypeError):  # not YAML (e.g. ">="): the string itself
            return value
    if _is_union(tp):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {_type_name(tp)}"
        )
    if origin is Literal:
        for choice in args:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"{key} must be one of {', '.join(repr(a) for a in args)}, not {value!r}.{hint}"
        )
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, prefix=key + ".")
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, str):
            parsed = (
                _yaml_value(value, key, "a list")
                if value.strip().startswith("[")
                else value.split(",")
            )
            value = parsed if isinstance(parsed, list) else [parsed]
        if not isinstance(value, (list, tuple)):
            value = [value]
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if isinstance(value, str):
            value = _yaml_value(value, key, "a mapping")
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, not {value!r}")
        value_tp = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in _TRUE:
            return True
        if str(value).lower() in _FALSE:
            return False
        raise ConfigError(f"{key} must be true or false, not {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be an integer, not {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be an integer, not {value!r}") from None
        if not f.is_integer():
            raise ConfigError(f"{key} must be an integer, not {value!r}")
        return int(f)
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, not {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key} must be a string, not {value!r}")
        return str(value)
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{key} must be a path, not {value!r}")
        return Path(value)
    return value


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
"""Environment variables that size the BLAS and OpenMP pools of libraries loaded later."""


def set_threads(threads: int = 0) -> int:
    """Set a stage's CPU threads: ``threads``, or with 0 every core this process may run on (its
    CPU affinity, which ``taskset`` and container cpusets narrow; ``os.cpu_count`` would count the
    whole machine and oversubscribe a pinned process). Bounds torch and also the BLAS and OpenMP
    pools of numpy, scipy and scikit-learn: those loaded now (``threadpoolctl``) and, through
    :data:`BLAS_THREAD_VARIABLES`, those loaded later. Unbounded, they spin on every core: a
    ``threads=1`` interp beside other jobs used 1,147 s of CPU for ~100 s of work. Returns the
    number set."""
    import os

    import torch
    from threadpoolctl import threadpool_limits

    if not threads and hasattr(os, "sched_getaffinity"):  # Linux
        threads = len(os.sched_getaffinity(0))
    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    for name in BLAS_THREAD_VARIABLES:
        os.environ[name] = str(n)
    threadpool_limits(n)
    return n
