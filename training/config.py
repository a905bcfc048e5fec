"""Typed configs: dataclasses loaded from YAML with dotted command-line overrides.

``load_config(DistillConfig, "configs/digits_js.yaml", ["divergence=fkl", "optim.lr=1e-5"])``
reads the file, applies each ``key.sub=value`` (values parsed as YAML scalars), and builds the
nested dataclasses. Unknown keys and wrong types stop with a message naming the key and the valid
ones; each dataclass validates its values in ``__post_init__``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import math
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


def _split_value(key: str, words: Sequence[str]) -> ConfigError:
    """The error for ``key=<words>`` that the shell split into several words (an unquoted value with spaces)."""
    return ConfigError(f"override {key}: the shell split its value into {len(words)} words {list(words)}; "
                       f"quote the whole value: {key}='{' '.join(words)}'")


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Set ``a.b.c=value`` entries in a nested dict (values parsed as YAML).

    A shell splits an unquoted ``data.prompts=[a cat, a red car]`` into the words ``data.prompts=[a``,
    ``cat,`` …: such words stop with a message showing the quoted override.
    """
    for i, item in enumerate(overrides):
        rest = list(itertools.takewhile(lambda w: "=" not in w, overrides[i + 1:]))  # the words a shell split off
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if rest:
            raise _split_value(key, [raw, *rest])
        try:
            value = _override_value(raw)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or "not valid YAML"
            raise ConfigError(f"override {key}: {raw!r} is not a value ({problem}); a string value with brackets "
                              f"or colons needs YAML quotes inside the shell's: {key}=\"'{raw}'\"") from None
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node[leaf] = value
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
    if tp is float:
        return _finite(value, where)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp is bool and isinstance(value, str) and value.lower() in _YAML11_BOOLEAN_WORDS:
        return value.lower() in ("yes", "on", "y")
    if isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _finite(value: Any, where: str) -> float:
    """``value`` as a finite float: every float setting is a rate, a weight, a scale or a time, and nan / inf
    would only show up later as a non-finite loss."""
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        with contextlib.suppress(ValueError):
            number = float(value)
    if number is None:
        raise ConfigError(f"{where}: expected float, got {value!r}")
    if not math.isfinite(number):
        raise ConfigError(f"{where}: {value!r} is not a finite number")
    return number


def _refuse_renamed(cls: type, data: dict, where: str) -> None:
    """Stop at a key ``cls.RENAMED`` lists (old name → new dotted name), naming the new one."""
    renamed = getattr(cls, "RENAMED", {})
    prefix = "" if where == "config" else where.removeprefix("config.") + "."
    for old in sorted(set(data) & set(renamed)):
        new = renamed[old]
        value = data[old]
        pairs = ([f"{prefix}{old}.{k} → {new}.{k}" for k in value] if isinstance(value, dict) and value
                 else [f"{prefix}{old} → {new}"])
        raise ConfigError(f"renamed setting: {', '.join(pairs)} (update the config file or the command line)")


def build(cls: type[T], data: dict, where: str = "config") -> T:
    """Build dataclass ``cls`` from a dict, recursively, checking keys and types.

    A dataclass may list renamed keys in a ``RENAMED`` class attribute (old key → new dotted key); such a
    key stops with a message naming its new name instead of being read or silently dropped.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    _refuse_renamed(cls, data, where)
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


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


_ABSENT = "<absent>"


def config_changes(config: Any, path: str | Path, ignore: Sequence[str] = ()) -> dict[str, tuple[Any, Any]]:
    """Dotted key → (saved value, value in ``config``) of every setting where ``config`` differs from the config
    file ``path`` (as :func:`save_config` writes it), leaving out the top-level keys in ``ignore``."""
    saved = _flatten(yaml.safe_load(Path(path).read_text()) or {})
    renames = _renamed_keys(type(config))
    for k in list(saved):  # a run saved before a setting was renamed is read under the new name
        old = next((o for o in renames if k == o or k.startswith(o + ".")), None)
        if old is not None:
            saved[renames[old] + k[len(old):]] = saved.pop(k)
    now = _flatten(yaml.safe_load(yaml.safe_dump(to_dict(config))))  # as it would read back from the file
    keys = [k for k in [*now, *(k for k in saved if k not in now)] if k.split(".")[0] not in ignore]
    # a setting added after the run was saved, still at its default, is not a change: the run was made with it
    defaults = {key: yaml.safe_load(yaml.safe_dump(_plain(default))) for key, _, default in config_keys(type(config))
                if default is not dataclasses.MISSING}
    for k in keys:
        if k not in saved and k in defaults and now.get(k, _ABSENT) == defaults[k]:
            saved[k] = now[k]
    return {k: (saved.get(k, _ABSENT), now.get(k, _ABSENT)) for k in keys
            if saved.get(k, _ABSENT) != now.get(k, _ABSENT)}


def _renamed_keys(cls: type, prefix: str = "") -> dict[str, str]:
    """Dotted old key → dotted new key of every ``RENAMED`` entry in ``cls`` and its sections."""
    out = {prefix + old: new for old, new in getattr(cls, "RENAMED", {}).items()}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(_renamed_keys(hints[f.name], f"{prefix}{f.name}."))
    return out


def _plain(value: Any) -> Any:
    """A default as :func:`to_dict` would write it (tuples as lists are left to yaml)."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
