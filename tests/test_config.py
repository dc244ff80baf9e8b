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


# --------------------------------------------------------------------------- cross-key rules (check_config)
def test_heads_must_divide_dim_at_load():
    """Regression: `--set mfq.heads=5` used to fail with a ValueError traceback when the ranker stage began."""
    with pytest.raises(ConfigError) as e:
        load_config(None, ["mfq.heads=5"])
    msg = str(e.value)
    assert "mfq.heads=5" in msg and "mfq.dim=32" in msg and "must divide" in msg
    assert "(--set)" in msg and "(default)" in msg                    # where each value came from
    assert "1, 2, 4, 8, 16, 32" in msg                                 # what would do


@pytest.mark.parametrize("overrides, fragments", [
    (["stat_forecast.dim=30"], ["stat_forecast.heads=4", "stat_forecast.dim=30"]),
    (["product_forecast.heads=3"], ["product_forecast.heads=3", "product_forecast.dim=64"]),
    (["data.val_fraction=0.5", "data.test_fraction=0.5"], ["data.val_fraction=0.5", "data.test_fraction=0.5", "[0, 1)"]),
    (["data.source=tiktok"], ["data.path must point at the tiktok input", "data.source=tiktok"]),
    (["data.source=canonical"], ["data.path must name a canonical dataset folder"]),
    (["simulate.segment_steps=5"], ["simulate.segment_steps=5", "must divide", "simulate.room_steps=96"]),
    (["simulate.room_steps=20", "simulate.product_steps=12"], ["simulate.product_steps=12", "at least 2 products"]),
    (["simulate.warmup_steps=60", "simulate.horizon_steps=30"], ["simulate.warmup_steps=60", "simulate.horizon_steps=30",
                                                                 "leave no step for impressions"]),
    ([f"simulate.{w}=0" for w in ("weight_collaborative", "weight_content", "weight_heat", "weight_user_bias",
                                  "weight_author_bias", "weight_patronage")], ["at least one gift signal weight"]),
    (["ranker.activity_windows=[0.02, 1.5]"], ["ranker.activity_windows=[0.02, 1.5]", "(0, 1]"]),
    (["ranker.activity_windows=[0.0]"], ["ranker.activity_windows"]),
    (["eval.two_stage_candidates=10"], ["eval.two_stage_candidates=10", "eval.k=20"]),
])
def test_cross_key_rules(overrides, fragments):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    for f in fragments:
        assert f in str(e.value)


def test_cross_key_rules_hold_for_the_defaults_and_experiment_files():
    from pathlib import Path

    load_config()
    for p in sorted(Path("yaml").glob("*.yaml")):
        load_config(p)
    load_config(None, ["eval.two_stage_candidates=0", "eval.k=500", "mfq.dim=30", "mfq.heads=5",
                       "ranker.activity_windows=[]"])


def test_cross_key_error_names_file_and_line_and_lists_every_broken_rule(tmp_path):
    p = write(tmp_path, "mfq:\n  dim: 30\n  heads: 4\neval:\n  two_stage_candidates: 5\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert f"mfq.dim=30 ({p}:2)" in msg and f"mfq.heads=4 ({p}:3)" in msg
    assert f"eval.two_stage_candidates=5 ({p}:5)" in msg
    assert "\n" not in msg                                              # one line for `error: ...`


def test_simulator_rules_are_the_config_rules():
    from data_prep.simulate import simulate

    from graphrec.config import check_simulate

    sim = dict(load_config().simulate, segment_steps=7)
    with pytest.raises(ConfigError, match=r"simulate.segment_steps=7 must divide simulate.room_steps=96"):
        check_simulate(sim)
    with pytest.raises(ConfigError, match="must divide"):
        simulate(sim)                                      # a section that did not come through load_config


def test_cli_cross_key_error_is_one_line_and_quick():
    import subprocess
    import sys
    import time

    t0 = time.perf_counter()
    with pytest.raises(ConfigError):
        load_config(None, ["mfq.heads=5"])
    assert time.perf_counter() - t0 < 1.0                 # at load, in well under a second
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "graphrec.run", "--set", "mfq.heads=5"], capture_output=True,
                       text=True, timeout=120)
    elapsed = time.perf_counter() - t0
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
    assert "mfq.heads=5" in lines[0] and "mfq.dim=32" in lines[0]
    assert elapsed < 20       # fails at load: no torch import, no stage (about 0.3 s on an idle machine)


@pytest.mark.parametrize("override", ["run.seed=!!int abc", "run.seed=!!timestamp x", "run.progress=!!bool maybe",
                                      "simulate.gift_rate=1" + "0" * 400, "run.seed=" + "9" * 30,
                                      "ranker.activity_windows=[1" + "0" * 400 + "]", "run.skip_stages=&a [*a]"])
def test_malformed_override_regressions(override):
    """Inputs the loader once answered with ValueError, AttributeError, KeyError or OverflowError."""
    with pytest.raises(ConfigError):
        load_config(None, [override])


@pytest.mark.parametrize("text", ["1: 2\n", "run: {3: 1}\n", "{[a]: 1}\n", "run: &a {name: *a}\n",
                                  "run: !!timestamp x\n", "run:\n  out_dir: \"a\\0b\"\n", "run: {seed: !!int x}\n"])
def test_malformed_file_regressions(tmp_path, text):
    """Files the loader once answered with TypeError, ConstructorError, RecursionError or AttributeError."""
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, text))
