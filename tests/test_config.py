import pytest

from graphrec.config import DEFAULTS_PATH, describe_schema, load_config, load_schema
from graphrec.errors import ConfigError
from graphrec.run import main


def write(tmp_path, text, name="exp.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_document_every_key():
    schema = load_schema()
    assert {"run", "data", "simulate"} <= set(schema)
    for keys in schema.values():
        for spec in keys.values():
            assert spec.doc.strip(), spec.dotted
    text = describe_schema()
    assert "simulate.gift_rate" in text and "Planted mean gift probability" in text


def test_defaults_values_and_attribute_access():
    cfg = load_config()
    assert cfg.run.seed == 0
    assert cfg.data.source == "simulate"
    assert cfg["simulate"]["gift_rate"] == pytest.approx(0.01)
    assert isinstance(cfg.simulate.gift_rate, float)


def test_file_overrides_defaults_and_set_overrides_file(tmp_path):
    p = write(tmp_path, "run:\n  seed: 5\n  name: exp\nsimulate:\n  num_users: 123\n")
    cfg = load_config(p, ["run.seed=9"])
    assert cfg.run.seed == 9          # --set wins over the file
    assert cfg.run.name == "exp"      # file wins over defaults
    assert cfg.simulate.num_users == 123
    assert cfg.simulate.num_authors == load_config().simulate.num_authors  # untouched default


def test_float_written_without_dot_is_converted(tmp_path):
    p = write(tmp_path, "simulate:\n  gift_rate: 1e-3\n")   # PyYAML reads this as the string '1e-3'
    assert load_config(p).simulate.gift_rate == pytest.approx(0.001)
    assert load_config(None, ["simulate.gift_rate=2e-3"]).simulate.gift_rate == pytest.approx(0.002)


def test_int_accepted_for_float_and_string_for_str():
    cfg = load_config(None, ["simulate.taste_noise=1", "run.name=2024"])
    assert cfg.simulate.taste_noise == 1.0 and isinstance(cfg.simulate.taste_noise, float)
    assert cfg.run.name == "2024"


@pytest.mark.parametrize("text, fragment", [
    ("simulate:\n  num_users: many\n", "must be int"),
    ("simulate:\n  num_users: 3.5\n", "must be int"),
    ("simulate:\n  gift_rate: lots\n", "must be float"),
    ("run:\n  progress: 1\n", "must be bool"),
    ("run:\n  name: [a, b]\n", "must be str"),
    ("run:\n  skip_stages: report\n", "must be list[str]"),
    ("run:\n  device: tpu\n", "must be one of"),
    ("simulate:\n  gift_rate: 0.9\n", "must be <= 0.5"),
    ("simulate:\n  num_users: 1\n", "must be >= 10"),
    ("run:\n  seed: null\n", "got null"),
])
def test_type_errors_name_file_line_and_key(tmp_path, text, fragment):
    p = write(tmp_path, "# comment\n" + text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert fragment in msg
    assert f"{p}:3" in msg                      # the key is on line 3 (after comment and section)


def test_nullable_key_accepts_null(tmp_path):
    assert load_config(write(tmp_path, "data:\n  path: null\n")).data.path is None


def test_unknown_key_suggests_nearest(tmp_path):
    p = write(tmp_path, "simulate:\n  num_user: 10\n")
    with pytest.raises(ConfigError, match=r"exp.yaml:2: unknown key 'simulate.num_user'; did you mean 'num_users'"):
        load_config(p)


def test_unknown_key_in_wrong_section_suggests_dotted(tmp_path):
    p = write(tmp_path, "run:\n  gift_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"did you mean 'simulate.gift_rate'"):
        load_config(p)


def test_unknown_section_suggests_nearest(tmp_path):
    with pytest.raises(ConfigError, match=r"exp.yaml:1: unknown section 'simulte'; did you mean 'simulate'"):
        load_config(write(tmp_path, "simulte:\n  num_users: 10\n"))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_malformed_yaml_names_line(tmp_path):
    p = write(tmp_path, "run:\n  seed: 1\n  name: [unclosed\nsimulate:\n  num_users: 3\n")
    with pytest.raises(ConfigError, match=rf"{p}:\d+: malformed YAML"):
        load_config(p)


def test_duplicate_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"exp.yaml:3: duplicate key 'run.seed'"):
        load_config(write(tmp_path, "run:\n  seed: 1\n  seed: 2\n"))


def test_non_mapping_file_and_section(tmp_path):
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match=r"exp.yaml:1: section 'run' must be a mapping"):
        load_config(write(tmp_path, "run: 3\n"))


def test_empty_file_is_defaults(tmp_path):
    assert load_config(write(tmp_path, "")).run.seed == 0


@pytest.mark.parametrize("override, fragment", [
    ("run.seed", "expected section.key=value"),
    ("seed=3", "expected section.key=value"),
    ("run.sed=3", "did you mean 'run.seed'"),
    ("run.seed=abc", "must be int"),
])
def test_override_errors(override, fragment):
    with pytest.raises(ConfigError, match=fragment) as e:
        load_config(None, [override])
    assert f"--set {override}" in str(e.value)


def test_list_override():
    assert load_config(None, ["run.skip_stages=[evaluation, report]"]).run.skip_stages == ["evaluation", "report"]


def test_schema_file_itself_is_checked(tmp_path):
    bad = write(tmp_path, "run:\n  seed: {type: int, default: x, doc: d}\n", "defaults.yaml")
    with pytest.raises(ConfigError, match="must be int"):
        load_schema(bad)
    bad = write(tmp_path, "run:\n  seed: {type: integer, default: 1, doc: d}\n", "defaults.yaml")
    with pytest.raises(ConfigError, match="unknown type"):
        load_schema(bad)
    bad = write(tmp_path, "run:\n  seed: {type: int, default: 1}\n", "defaults.yaml")
    with pytest.raises(ConfigError, match="must declare type, default and doc"):
        load_schema(bad)
    assert DEFAULTS_PATH.exists()


def test_cli_user_error_is_one_line_without_traceback(tmp_path, capsys):
    p = write(tmp_path, "simulate:\n  num_user: 10\n")
    assert main(["--cfg", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "did you mean 'num_users'" in err
    assert "Traceback" not in err


def test_cli_help_config_and_list_stages(capsys):
    assert main(["--help-config"]) == 0
    assert "data.source" in capsys.readouterr().out
    assert main(["--list-stages"]) == 0
    out = capsys.readouterr().out.split()
    assert out.index("data") < out.index("evaluation") < out.index("report")
