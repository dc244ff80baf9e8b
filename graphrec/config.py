"""Layered, type-checked configuration: defaults -> experiment file -> ``--set`` overrides.

Every key is declared once, with its type, default and meaning, in ``graphrec/defaults.yaml``
(RecBole-style: one place documents all keys). Experiment files only hold values. Mistakes are
reported as :class:`ConfigError` naming the file and line (or the ``--set`` argument) and, for an
unknown key, the nearest valid one. Rules that tie several keys together (attention heads dividing
their width, the simulator's timeline, split fractions, ...) are checked at the end of
:func:`load_config` by :func:`check_config`, so a bad combination fails before any stage runs.
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
    def malformed(exc: Exception) -> ConfigError:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc) or type(exc).__name__
        return ConfigError(f"{where}: malformed YAML: {problem}")

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise malformed(exc) from None
    if node is None:
        return {}, {}
    lines: Dict[Tuple[str, ...], int] = {}
    active: set = set()                      # mappings on the current path: an alias may point back

    def walk(n: yaml.Node, path: Tuple[str, ...]) -> None:
        if isinstance(n, yaml.MappingNode) and id(n) not in active and len(path) < 3:
            active.add(id(n))
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
            active.discard(id(n))

    walk(node, ())
    try:
        data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - PyYAML raises ValueError, KeyError, ... on bad tagged scalars
        raise malformed(exc) from None
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
_SCHEMA_CACHE: Dict[Tuple[str, int, int], Dict[str, Dict[str, KeySpec]]] = {}


def load_schema(path: Path = DEFAULTS_PATH) -> Dict[str, Dict[str, KeySpec]]:
    """Read the defaults file into {section: {key: KeySpec}}; the defaults themselves are checked.

    Parsed once per version of the file (path, size and modification time)."""
    path = Path(path)
    try:
        st = path.stat()
        key: Optional[Tuple[str, int, int]] = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    except OSError:
        key = None                                       # _read_yaml_file reports it
    if key is not None and key in _SCHEMA_CACHE:
        return {section: dict(keys) for section, keys in _SCHEMA_CACHE[key].items()}
    schema = _parse_schema(path)
    if key is not None:
        _SCHEMA_CACHE[key] = schema
    return {section: dict(keys) for section, keys in schema.items()}


def _parse_schema(path: Path) -> Dict[str, Dict[str, KeySpec]]:
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
            raise ConfigError(f"{label} must be bool (true/false), got {_short(v)}")
        if kind == "int":
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{label} must be int, got {_short(v)}")
            if not _INT_MIN <= v <= _INT_MAX:
                raise ConfigError(f"{label} must be a 64-bit int (|value| < 2**63), got {_short(v)}")
            return v
        if kind == "float":
            if isinstance(v, bool):
                raise ConfigError(f"{label} must be float, got {v!r}")
            if isinstance(v, str):  # PyYAML reads 1e-3 (no dot) as a string
                try:
                    v = float(v)
                except ValueError:
                    raise ConfigError(f"{label} must be float, got {_short(v)}") from None
            try:
                finite = isinstance(v, (int, float)) and math.isfinite(float(v))
            except OverflowError:                        # an int beyond the float range
                finite = False
            if not finite:
                raise ConfigError(f"{label} must be a finite float, got {_short(v)}")
            return float(v)
        if kind in ("str", "path"):
            if not isinstance(v, str):
                raise ConfigError(f"{label} must be {kind} (a string), got {_short(v)}")
            if "\x00" in v:
                raise ConfigError(f"{label} must not contain a NUL character, got {_short(v)}")
            return v
        raise AssertionError(kind)

    if t.startswith("list["):
        inner = t[5:-1]
        if not isinstance(value, list):
            raise ConfigError(f"{label} must be {t} (a YAML list like [a, b]), got {_short(value)}")
        out = [scalar(inner, v) for v in value]
    else:
        out = scalar(t, value)
    for v in (out if isinstance(out, list) else [out]):
        if spec.choices is not None and v not in spec.choices:
            raise ConfigError(f"{label} must be one of {list(spec.choices)}, got {_short(v)}")
        if spec.min is not None and isinstance(v, (int, float)) and v < spec.min:
            raise ConfigError(f"{label} must be >= {spec.min}, got {v!r}")
        if spec.max is not None and isinstance(v, (int, float)) and v > spec.max:
            raise ConfigError(f"{label} must be <= {spec.max}, got {v!r}")
    return out


_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1          # what numpy and torch hold


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters for one-line messages."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _suggest(word: Any, options: Iterable[str]) -> str:
    match = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.5)
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


def _apply(cfg: Dict[str, Dict[str, Any]], schema, data: Mapping, lines, source: str,
           origin: Optional[Dict[str, str]] = None) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: a config file must be a mapping of sections, got {type(data).__name__}")
    for section, values in data.items():
        line = lines.get((str(section),), "?")
        if section not in schema:
            raise ConfigError(f"{source}:{line}: unknown section '{section}'{_suggest(section, schema)}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{source}:{line}: section '{section}' must be a mapping of keys")
        for key, value in values.items():
            kline = lines.get((section, str(key)), "?")
            if key not in schema[section]:
                everything = [f"{s}.{k}" for s in schema for k in schema[s]]
                hint = _suggest(key, schema[section]) or _suggest(f"{section}.{key}", everything)
                raise ConfigError(f"{source}:{kline}: unknown key '{section}.{key}'{hint}")
            cfg[section][key] = coerce_value(schema[section][key], value, f"{source}:{kline}")
            if origin is not None:
                origin[f"{section}.{key}"] = f"{source}:{kline}"


def parse_override(text: str, schema) -> Tuple[str, str, Any]:
    """Parse one ``section.key=value`` override (value in YAML syntax)."""
    where = f"--set {text if len(text) <= 100 else text[:97] + '...'}"
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
    except Exception:  # noqa: BLE001 - not YAML (PyYAML also raises ValueError, KeyError, ...): the text itself
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
    origin: Dict[str, str] = {}               # dotted key -> where its value was set (absent: default)
    if path is not None:
        path = Path(path)
        data, lines = _read_yaml_file(path)
        _apply(cfg, schema, data if data is not None else {}, lines, str(path), origin)
    for text in overrides:
        section, key, value = parse_override(text, schema)
        cfg[section][key] = value
        origin[f"{section}.{key}"] = f"--set {text}"
    config = Config({s: Section(v) for s, v in cfg.items()})
    check_config(config, origin)
    return config


# --------------------------------------------------------------------------- cross-key rules
# Every rule that ties two or more keys together lives here, so that a bad combination is reported
# at load, in one line naming the keys, their values and where they were set, before any stage runs.
# The simulator runs :func:`check_simulate` too (on sections that did not come through load_config).
# README ("Configuration") lists these rules; keep it in step.

class _Show:
    """Renders ``section.key=value (where it was set)`` for messages."""

    def __init__(self, cfg: Mapping[str, Mapping[str, Any]], origin: Optional[Mapping[str, str]] = None,
                 section: Optional[str] = None) -> None:
        self.cfg, self.origin, self.section = cfg, origin, section

    def value(self, dotted: str) -> Any:
        section, key = dotted.split(".")
        return self.cfg[key] if self.section is not None else self.cfg[section][key]

    def __call__(self, dotted: str) -> str:
        v = self.value(dotted)
        text = yaml.safe_dump(v, default_flow_style=True, width=10**6).strip()   # as in a YAML file
        if text.endswith("..."):                                                 # a scalar's end marker
            text = text[:-3].strip()
        if self.origin is None:
            return f"{dotted}={text}"
        where = self.origin.get(dotted, "default")
        return f"{dotted}={text} ({'--set' if where.startswith('--set ') else where})"


def _divisors(n: int, limit: int = 12) -> str:
    if n > 10**6:
        return ""
    found = [d for d in range(1, n + 1) if n % d == 0]
    return ", ".join(map(str, found[:limit])) + (", ..." if len(found) > limit else "")


HEAD_WIDTHS = (("mfq", "every MFQ attention block (nn.MultiheadAttention)"),
               ("stat_forecast", "the statistic forecaster's iTransformer (nn.TransformerEncoderLayer)"),
               ("product_forecast", "the product forecaster's Transformer (nn.TransformerEncoderLayer)"))


def _simulate_problems(show: _Show) -> List[str]:
    v = show.value
    out: List[str] = []
    T, W, P = v("simulate.room_steps"), v("simulate.segment_steps"), v("simulate.product_steps")
    warm, H = v("simulate.warmup_steps"), v("simulate.horizon_steps")
    if W <= 0 or T % W:
        out.append(f"{show('simulate.segment_steps')} must divide {show('simulate.room_steps')}: every room is cut "
                   f"into whole content segments")
    if P <= 0 or T // P < 2:
        out.append(f"{show('simulate.product_steps')} must allow at least 2 products per room, i.e. be at most "
                   f"simulate.room_steps / 2 = {T // 2} ({show('simulate.room_steps')})")
    else:
        last = min(T, (T // P - 1) * P)
        if warm + H >= last:
            out.append(f"{show('simulate.warmup_steps')} + {show('simulate.horizon_steps')} = {warm + H} leave no step "
                       f"for impressions: the sum must be below {last}, the smaller of simulate.room_steps and the start of "
                       f"the last product ({show('simulate.room_steps')}, {show('simulate.product_steps')}); "
                       f"raise room_steps or lower them")
    weights = ("simulate.weight_collaborative", "simulate.weight_content", "simulate.weight_heat",
               "simulate.weight_user_bias", "simulate.weight_author_bias", "simulate.weight_patronage")
    if not any(v(w) > 0 for w in weights):
        out.append("simulate.weight_*: at least one gift signal weight must be positive (all of "
                   + ", ".join(show(w) for w in weights) + " are 0)")
    return out


def check_simulate(sim: Mapping[str, Any], origin: Optional[Mapping[str, str]] = None) -> None:
    """The simulator's rules on a ``simulate`` section: raise ConfigError naming every broken one."""
    problems = _simulate_problems(_Show(sim, origin, section="simulate"))
    if problems:
        raise ConfigError("; ".join(problems))


def check_split_fractions(val_fraction: float, test_fraction: float, show: Optional[_Show] = None) -> None:
    """``data.val_fraction + data.test_fraction`` must leave a training share."""
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        shown = (f"{show('data.val_fraction')} + {show('data.test_fraction')}" if show is not None
                 else f"{val_fraction} + {test_fraction}")
        raise ConfigError(f"data.val_fraction + data.test_fraction must be in [0, 1), got {shown}: "
                          f"the rest of the impressions is the training split")


def check_data_path(source: str, path: Any, show: Optional[_Show] = None) -> None:
    """Every source but the simulator reads ``data.path``; MovieLens without it is downloaded."""
    if path or source in ("simulate", "movielens"):
        return
    when = show("data.source") if show is not None else f"data.source={source}"
    if source == "canonical":
        raise ConfigError(f"data.path must name a canonical dataset folder when {when}")
    raise ConfigError(f"data.path must point at the {source} input (see README: 'Public datasets') when {when}")


def _problems(cfg: Config, show: _Show) -> List[str]:
    v = show.value
    out: List[str] = []
    for section, what in HEAD_WIDTHS:
        dim, heads = v(f"{section}.dim"), v(f"{section}.heads")
        if heads <= 0 or dim % heads:
            hint = _divisors(dim)
            out.append(f"{show(f'{section}.heads')} must divide {show(f'{section}.dim')}: {what} splits "
                       f"{section}.dim into {section}.heads equal parts"
                       + (f"; choose {section}.heads among {hint}" if hint else ""))
    try:
        check_split_fractions(v("data.val_fraction"), v("data.test_fraction"), show)
    except ConfigError as exc:
        out.append(str(exc))
    try:
        check_data_path(v("data.source"), v("data.path"), show)
    except ConfigError as exc:
        out.append(str(exc))
    out += _simulate_problems(show)
    bad = [w for w in v("ranker.activity_windows") if not 0 < w <= 1]
    if bad:
        out.append(f"{show('ranker.activity_windows')}: every window is a fraction of the data's time span, in "
                   f"(0, 1] (not {', '.join(map(str, bad))})")
    n, k = v("eval.two_stage_candidates"), v("eval.k")
    if 0 < n < k:
        out.append(f"{show('eval.two_stage_candidates')} must be 0 (off) or at least {show('eval.k')}: the "
                   f"two-stage top-K ranks only the retrieved candidates")
    return out


def check_config(cfg: Config, origin: Optional[Mapping[str, str]] = None) -> None:
    """Check every cross-key rule of a resolved configuration (README: "Configuration"); raise one
    ConfigError naming all broken rules, their keys, values and where each value was set."""
    problems = _problems(cfg, _Show(cfg, origin or {}))
    if problems:
        raise ConfigError("; ".join(problems))


def describe_schema(schema_path: Path = DEFAULTS_PATH) -> str:
    """A plain-text table of every key: what ``--help-config`` prints."""
    out: List[str] = []
    for section, keys in load_schema(schema_path).items():
        out.append(f"[{section}]")
        for spec in keys.values():
            extra = f" one of {list(spec.choices)}" if spec.choices else ""
            out.append(f"  {spec.dotted} ({spec.type}{extra}, default {spec.default!r})\n      {spec.doc}")
    return "\n".join(out)
