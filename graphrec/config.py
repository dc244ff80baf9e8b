"""Layered, type-checked configuration: defaults -> experiment file -> ``--set`` overrides.

Every key is declared once, with its type, default and meaning, in ``graphrec/defaults.yaml``
(RecBole-style: one place documents all keys). Experiment files only hold values. Mistakes are
reported as :class:`ConfigError` naming the file and line (or the ``--set`` argument) and, for an
unknown key, the nearest valid one.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import yaml

from .errors import ConfigError

DEFAULTS_PATH = Path(__file__).with_name("defaults.yaml")
_SPEC_FIELDS = {"type", "default", "doc", "choices", "min", "max", "nullable"}
_TYPES = {"str", "int", "float", "bool", "path", "list[int]", "list[float]", "list[str]"}


@dataclass(frozen=True)
class KeySpec:
    section: str
    name: str
    type: str
    default: Any
    doc: str
    choices: Optional[Tuple[Any, ...]] = None
    min: Optional[float] = None
    max: Optional[float] = None
    nullable: bool = False

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"


# --------------------------------------------------------------------------- YAML with lines
def _parse_yaml(text: str, source: str) -> Tuple[Any, Dict[Tuple[str, ...], int]]:
    """Parse YAML text; return the data and the 1-based line of every mapping key path."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: malformed YAML: {problem}") from None
    if node is None:
        return {}, {}
    lines: Dict[Tuple[str, ...], int] = {}

    def walk(n: yaml.Node, path: Tuple[str, ...]) -> None:
        if isinstance(n, yaml.MappingNode):
            seen = set()
            for key_node, value_node in n.value:
                key = str(key_node.value)
                if key in seen:
                    raise ConfigError(
                        f"{source}:{key_node.start_mark.line + 1}: duplicate key "
                        f"'{'.'.join(path + (key,))}'")
                seen.add(key)
                lines[path + (key,)] = key_node.start_mark.line + 1
                walk(value_node, path + (key,))

    walk(node, ())
    data = yaml.safe_load(text)
    return data, lines


def _read_yaml_file(path: Path) -> Tuple[Any, Dict[Tuple[str, ...], int]]:
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    if not path.is_file():
        raise ConfigError(f"{path}: not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    return _parse_yaml(text, str(path))


# --------------------------------------------------------------------------- schema
def load_schema(path: Path = DEFAULTS_PATH) -> Dict[str, Dict[str, KeySpec]]:
    """Read the defaults file into {section: {key: KeySpec}}; the defaults themselves are checked."""
    data, lines = _read_yaml_file(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the defaults file must be a mapping of sections")
    schema: Dict[str, Dict[str, KeySpec]] = {}
    for section, keys in data.items():
        if not isinstance(keys, dict):
            raise ConfigError(f"{path}:{lines.get((section,), '?')}: section '{section}' must be a mapping")
        schema[section] = {}
        for name, spec in keys.items():
            where = f"{path}:{lines.get((section, name), '?')}"
            if not isinstance(spec, dict) or not {"type", "default", "doc"} <= set(spec):
                raise ConfigError(f"{where}: '{section}.{name}' must declare type, default and doc")
            unknown = set(spec) - _SPEC_FIELDS
            if unknown:
                raise ConfigError(f"{where}: '{section}.{name}' has unknown spec fields {sorted(unknown)}")
            if spec["type"] not in _TYPES:
                raise ConfigError(f"{where}: '{section}.{name}' has unknown type {spec['type']!r}")
            ks = KeySpec(section=section, name=name, type=spec["type"], default=spec["default"],
                         doc=str(spec["doc"]), choices=tuple(spec["choices"]) if "choices" in spec else None,
                         min=spec.get("min"), max=spec.get("max"), nullable=bool(spec.get("nullable", False)))
            coerce_value(ks, ks.default, where)  # a default must satisfy its own declaration
            schema[section][name] = ks
    return schema


def coerce_value(spec: KeySpec, value: Any, where: str) -> Any:
    """Check ``value`` against ``spec`` and return it in canonical form, or raise ConfigError."""
    label = f"{where}: '{spec.dotted}'"
    if value is None:
        if spec.nullable:
            return None
        raise ConfigError(f"{label} must be {spec.type}, got null")
    t = spec.type

    def scalar(kind: str, v: Any) -> Any:
        if kind == "bool":
            if isinstance(v, bool):
                return v
            raise ConfigError(f"{label} must be bool (true/false), got {v!r}")
        if kind == "int":
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{label} must be int, got {v!r}")
            return v
        if kind == "float":
            if isinstance(v, bool):
                raise ConfigError(f"{label} must be float, got {v!r}")
            if isinstance(v, str):  # PyYAML reads 1e-3 (no dot) as a string
                try:
                    v = float(v)
                except ValueError:
                    raise ConfigError(f"{label} must be float, got {v!r}") from None
            if not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                raise ConfigError(f"{label} must be a finite float, got {v!r}")
            return float(v)
        if kind in ("str", "path"):
            if not isinstance(v, str):
                raise ConfigError(f"{label} must be {kind} (a string), got {v!r}")
            return v
        raise AssertionError(kind)

    if t.startswith("list["):
        inner = t[5:-1]
        if not isinstance(value, list):
            raise ConfigError(f"{label} must be {t} (a YAML list like [a, b]), got {value!r}")
        out = [scalar(inner, v) for v in value]
    else:
        out = scalar(t, value)
    for v in (out if isinstance(out, list) else [out]):
        if spec.choices is not None and v not in spec.choices:
            raise ConfigError(f"{label} must be one of {list(spec.choices)}, got {v!r}")
        if spec.min is not None and isinstance(v, (int, float)) and v < spec.min:
            raise ConfigError(f"{label} must be >= {spec.min}, got {v!r}")
        if spec.max is not None and isinstance(v, (int, float)) and v > spec.max:
            raise ConfigError(f"{label} must be <= {spec.max}, got {v!r}")
    return out


def _suggest(word: str, options: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


# --------------------------------------------------------------------------- config object
class Section(dict):
    """A config section: a dict whose keys also read as attributes (``cfg.run.seed``)."""

    def __getattr__(self, item: str) -> Any:
        try:
            return self[item]
        except KeyError:
            raise AttributeError(f"no config key '{item}'") from None


class Config(dict):
    """The resolved configuration: ``{section: Section}``, with the file it came from."""

    def __getattr__(self, item: str) -> Section:
        try:
            return self[item]
        except KeyError:
            raise AttributeError(f"no config section '{item}'") from None

    def to_dict(self) -> Dict[str, Dict[str, Any]]:
        return {s: dict(v) for s, v in self.items()}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def fingerprint(self, *sections: str) -> str:
        """A short stable hash of the given sections (all when none), for cache folders."""
        chosen = {s: dict(self[s]) for s in (sections or tuple(self))}
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:12]


def _apply(cfg: Dict[str, Dict[str, Any]], schema, data: Mapping, lines, source: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: a config file must be a mapping of sections, got {type(data).__name__}")
    for section, values in data.items():
        line = lines.get((section,), "?")
        if section not in schema:
            raise ConfigError(f"{source}:{line}: unknown section '{section}'{_suggest(section, schema)}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{source}:{line}: section '{section}' must be a mapping of keys")
        for key, value in values.items():
            kline = lines.get((section, key), "?")
            if key not in schema[section]:
                everything = [f"{s}.{k}" for s in schema for k in schema[s]]
                hint = _suggest(key, schema[section]) or _suggest(f"{section}.{key}", everything)
                raise ConfigError(f"{source}:{kline}: unknown key '{section}.{key}'{hint}")
            cfg[section][key] = coerce_value(schema[section][key], value, f"{source}:{kline}")


def parse_override(text: str, schema) -> Tuple[str, str, Any]:
    """Parse one ``section.key=value`` override (value in YAML syntax)."""
    where = f"--set {text}"
    if "=" not in text:
        raise ConfigError(f"{where}: expected section.key=value")
    dotted, raw = text.split("=", 1)
    dotted = dotted.strip()
    if dotted.count(".") != 1:
        raise ConfigError(f"{where}: expected section.key=value, got key '{dotted}'")
    section, key = dotted.split(".")
    everything = [f"{s}.{k}" for s in schema for k in schema[s]]
    if section not in schema or key not in schema[section]:
        raise ConfigError(f"{where}: unknown key '{dotted}'{_suggest(dotted, everything)}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if schema[section][key].type in ("str", "path") and value is not None and not isinstance(value, str):
        value = raw.strip()  # `--set run.name=2024` is the string "2024"
    return section, key, coerce_value(schema[section][key], value, where)


def load_config(path: Optional[Path] = None, overrides: Iterable[str] = (),
                schema_path: Path = DEFAULTS_PATH) -> Config:
    """Resolve the configuration: defaults, then the experiment file ``path``, then overrides."""
    schema = load_schema(schema_path)
    cfg: Dict[str, Dict[str, Any]] = {s: {k: copy.deepcopy(spec.default) for k, spec in keys.items()}
                                      for s, keys in schema.items()}
    if path is not None:
        path = Path(path)
        data, lines = _read_yaml_file(path)
        _apply(cfg, schema, data if data is not None else {}, lines, str(path))
    for text in overrides:
        section, key, value = parse_override(text, schema)
        cfg[section][key] = value
    return Config({s: Section(v) for s, v in cfg.items()})


def describe_schema(schema_path: Path = DEFAULTS_PATH) -> str:
    """A plain-text table of every key: what ``--help-config`` prints."""
    out: List[str] = []
    for section, keys in load_schema(schema_path).items():
        out.append(f"[{section}]")
        for spec in keys.values():
            extra = f" one of {list(spec.choices)}" if spec.choices else ""
            out.append(f"  {spec.dotted} ({spec.type}{extra}, default {spec.default!r})\n      {spec.doc}")
    return "\n".join(out)
