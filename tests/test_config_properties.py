"""Property-based tests of the config loader: whatever a user writes, in a ``--set`` override or in an
experiment file, the loader answers with the configuration or a UserError (ConfigError), never a
traceback of another exception type. Few examples (seconds), no deadline."""
import json
import tempfile

import pytest
import yaml

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from graphrec.config import load_config, load_schema  # noqa: E402
from graphrec.errors import UserError  # noqa: E402

_SCHEMA = load_schema()
_KEYS = [f"{s}.{k}" for s in _SCHEMA for k in _SCHEMA[s]]
_TRICKY = ["!!timestamp abc", "!!int abc", "!!float x", "!!bool maybe", "!!binary ===", "&a [*a]",
           "{[a]: 1}", "? [a]\n: 1", "0x_", "1e999", "-.inf", ".nan", "1" + "0" * 400, "!!python/object:os.system",
           "{<<: 3}", "!!set {a}", "2024-01-01", "[[[[[[]]]]]]", "'unclosed", "a: b: c", "\t", "~", "null",
           "\"a\\0b\""]
_scalars = (st.none() | st.booleans() | st.integers(min_value=-10**30, max_value=10**30)
            | st.sampled_from([2**63, -(2**63) - 1, 10**400, 0, -1, 1])
            | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12) | st.sampled_from(_TRICKY))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)


def _as_text(value, how: int) -> str:
    if isinstance(value, str) and how:
        return value
    if how == 1:
        return str(value)
    return json.dumps(value)


def _load_or_user_error(*args) -> None:
    try:
        load_config(*args)
    except UserError:
        pass


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(_KEYS) | st.text(max_size=12), value=_values, how=st.integers(0, 2))
def test_property_malformed_set_override_is_a_config_error(key, value, how):
    _load_or_user_error(None, [f"{key}={_as_text(value, how)}"])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(_KEYS), value=_values, section=st.sampled_from([None, "", "nosuch", 3]),
       raw=st.none() | st.text(max_size=40) | st.sampled_from(_TRICKY))
def test_property_malformed_yaml_file_is_a_config_error(key, value, section, raw):
    sec, name = key.split(".")
    if raw is not None:
        text = raw
    elif section is None:
        text = yaml.safe_dump({sec: {name: value}}, allow_unicode=True)
    else:
        text = yaml.safe_dump({sec: value, section: {name: value}} if section != 3 else {sec: {3: value}},
                              allow_unicode=True)
    with tempfile.TemporaryDirectory() as d:
        p = f"{d}/exp.yaml"
        with open(p, "w", encoding="utf-8") as f:
            f.write(text)
        _load_or_user_error(p)
