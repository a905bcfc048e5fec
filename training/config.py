"""Typed configs: dataclasses loaded from YAML with dotted command-line overrides.

``load_config(DistillConfig, "configs/digits_js.yaml", ["divergence=fkl", "optim.lr=1e-5"])``
reads the file, applies each ``key.sub=value`` (values parsed as YAML scalars), and builds the
nested dataclasses. Unknown keys and wrong types stop with a message naming the key and the valid
ones; each dataclass validates its values in ``__post_init__``.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit its dataclass."""


# YAML 1.1 reads these as booleans; on a command line `mixed_precision=no` means the string
_YAML11_BOOLEAN_WORDS = {"yes", "no", "on", "off", "y", "n"}


def _override_value(raw: str) -> Any:
    """An override's value parsed as YAML, except that yes/no/on/off stay strings (true/false are booleans)."""
    if not raw.strip():
        return None
    if raw.strip().lower() in _YAML11_BOOLEAN_WORDS:
        return raw.strip()
    return yaml.safe_load(raw)


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Set ``a.b.c=value`` entries in a nested dict (values parsed as YAML)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        node = data
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node[leaf] = _override_value(raw)
    return data


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:  # `Section | None` and the like: the one real error says what is wrong
            raise errors[0]
        raise ConfigError(f"{where}: {value!r} is not a valid {tp} ({'; '.join(map(str, errors))})")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a section, got {value!r}")
        return build(tp, value, where)
    if origin in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (arg, *_) = typing.get_args(tp) or (Any,)
        items = [_convert(arg, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp is bool and isinstance(value, str) and value.lower() in _YAML11_BOOLEAN_WORDS:
        return value.lower() in ("yes", "on", "y")
    if isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def build(cls: type[T], data: dict, where: str = "config") -> T:
    """Build dataclass ``cls`` from a dict, recursively, checking keys and types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid: {sorted(fields)}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Load ``cls`` from a YAML file (optional) and dotted overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    return build(cls, apply_overrides(data, overrides))


_OVERRIDE = re.compile(r"[A-Za-z_][\w.]*=")


def parse_args_with_overrides(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args`` for a parser whose ``key=value`` overrides are a positional list.

    argparse gives every word after a list option (``--seeds 0 1``) to that list, so
    ``--seeds 0 1 steps=500`` would read ``steps=500`` as a seed. Here a ``key=value`` word goes to the
    overrides wherever it stands, unless it is the value of an option that takes exactly one.
    """
    words = list(sys.argv[1:] if argv is None else argv)
    takes_one = {s for a in parser._actions if a.option_strings and a.nargs is None for s in a.option_strings}
    end = words.index("--") if "--" in words else len(words)  # after a `--` every word is positional already
    kept, moved = [], []
    for i, word in enumerate(words[:end]):
        if _OVERRIDE.match(word) and not (i and words[i - 1] in takes_one):
            moved.append(word)
        else:
            kept.append(word)
    return parser.parse_args([*kept, "--", *moved, *words[end + 1:]])


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and typing.get_origin(tp) is None:
        return tp.__name__
    return str(tp).replace("typing.", "")


def config_keys(cls: type, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(dotted key, type, default) of every setting of dataclass ``cls``, sections flattened, in field order.

    A setting without a default has ``dataclasses.MISSING``.
    """
    hints = typing.get_type_hints(cls)
    rows: list[tuple[str, str, Any]] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, key = hints[f.name], prefix + f.name
        if dataclasses.is_dataclass(tp):
            rows += config_keys(tp, key + ".")
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        rows.append((key, _type_name(tp), default))
    return rows


def describe_config(cls: type) -> str:
    """One line per setting of ``cls``: ``key  type = default`` (for ``--help``)."""
    rows = config_keys(cls)
    width = max(len(key) for key, _, _ in rows)
    return "\n".join(f"  {key:<{width}}  {tp} = {'(required)' if default is dataclasses.MISSING else repr(default)}"
                     for key, tp, default in rows)


def to_dict(config: Any) -> dict:
    """Plain dict of a config dataclass (for saving next to checkpoints)."""
    return dataclasses.asdict(config)


def save_config(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
