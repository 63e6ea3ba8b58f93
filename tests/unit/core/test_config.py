"""Configuration: the documented file loads, mistakes name the key and where it came from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import PROJECT  # noqa: E402
from flows.core.config import DEFAULT_CONFIG, ConfigError, load_config


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _default() -> dict:
    return yaml.safe_load(DEFAULT_CONFIG.read_text())


def test_default_config_is_valid_and_uses_the_paper_temperatures() -> None:
    cfg = load_config()
    assert [cfg.lms.for_role(r).temperature for r in ("weak", "peer", "strong")] == [0.8, 0.6, 0.2]
    assert all(s.is_embedded for _, s in cfg.lms.items())


def test_paper_profile_maps_roles_to_qwen() -> None:
    cfg = load_config(profile="paper")
    assert cfg.lms.weak.model.endswith("Qwen2.5-0.5B-Instruct")
    assert cfg.lms.peer.model.endswith("Qwen2.5-7B-Instruct")
    assert cfg.lms.strong.model.endswith("Qwen2.5-14B-Instruct")
    assert cfg.lms.judge.model.endswith("Qwen2.5-32B-Instruct")
    assert cfg.lms.weak.api_key_env == "MASTER_API_KEY"


def test_unknown_role_names_key_and_file(tmp_path: Path) -> None:
    data = _default()
    data["lms"]["teacher"] = dict(data["lms"]["strong"])
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "lms.teacher" in str(err.value)
    assert "unknown key" in str(err.value)


def test_non_numeric_temperature_names_key_and_file(tmp_path: Path) -> None:
    data = _default()
    data["lms"]["weak"]["temperature"] = "hot"
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}: lms.weak.temperature" in str(err.value) and "'hot'" in str(err.value)


def test_missing_model_names_key_and_file(tmp_path: Path) -> None:
    data = _default()
    del data["lms"]["peer"]["model"]
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError, match=r"lms\.peer\.model: Field required"):
        load_config(path)


def test_env_override_applies_and_errors_name_the_variable() -> None:
    cfg = load_config(environ={"MASTER__LMS__WEAK__TEMPERATURE": "0.5"})
    assert cfg.lms.weak.temperature == 0.5
    with pytest.raises(ConfigError, match=r"^MASTER__LMS__WEAK__TEMPERATURE: lms\.weak"):
        load_config(environ={"MASTER__LMS__WEAK__TEMPERATURE": "hot"})


def test_api_base_takes_a_list_of_replicas_and_names_a_bad_one() -> None:
    base = {"MASTER__LMS__WEAK__MODEL": "openai/m"}
    two = "[http://a:8000/v1, http://b:8000/v1]"
    cfg = load_config(environ={**base, "MASTER__LMS__WEAK__API_BASE": two})
    assert cfg.lms.weak.replicas == ("http://a:8000/v1", "http://b:8000/v1")
    one = load_config(environ={**base, "MASTER__LMS__WEAK__API_BASE": "http://a:8000/v1"})
    assert one.lms.weak.replicas == ("http://a:8000/v1",)
    twice = "[http://a:8000/v1, http://a:8000/v1/]"
    with pytest.raises(ConfigError, match=r"^MASTER__LMS__WEAK__API_BASE: .*listed twice"):
        load_config(environ={**base, "MASTER__LMS__WEAK__API_BASE": twice})
    with pytest.raises(ConfigError, match=r"^MASTER__LMS__WEAK__API_BASE: .*empty"):
        load_config(environ={**base, "MASTER__LMS__WEAK__API_BASE": "[]"})


def test_a_replica_list_for_a_litellm_model_is_one_clear_error() -> None:
    from modules.lm.factory import build_lm
    from modules.lm.settings import LMConfigError, LMSettings

    settings = LMSettings(model="anthropic/claude", api_base=["http://a/v1", "http://b/v1"])
    with pytest.raises(LMConfigError, match="role weak: api_base lists 2 replicas"):
        build_lm("weak", settings, None)


def test_a_pasted_key_is_refused_where_a_variable_name_belongs(tmp_path: Path) -> None:
    data = _default()
    data["lms"]["judge"]["api_key_env"] = "sk-proj-abc123-secret"
    with pytest.raises(ConfigError, match="lms.judge.api_key_env") as err:
        load_config(_write(tmp_path, data))
    assert "sk-proj-abc123-secret" not in str(err.value).split("(got")[0]


def test_invalid_yaml_and_missing_file_and_unknown_profile(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("lms:\n  weak: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+: not valid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="known profiles: boostqa, boostqa-clean, paper, "):
        load_config(profile="nonexistent")


def test_fingerprint_ignores_where_output_goes_but_not_what_shapes_data() -> None:
    base = load_config()
    moved = load_config(environ={"MASTER__RUN__OUT": "/elsewhere", "MASTER__RUN__CONCURRENCY": "3"})
    hotter = load_config(environ={"MASTER__LMS__STRONG__TEMPERATURE": "0.9"})
    assert base.fingerprint() == moved.fingerprint()
    assert base.fingerprint() != hotter.fingerprint()


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d["lms"].update(teacher=d["lms"]["strong"]), "lms.teacher: unknown key"),
        (lambda d: d["lms"]["weak"].update(temperature="hot"), "lms.weak.temperature"),
        (lambda d: d["lms"]["strong"].pop("model"), "lms.strong.model: Field required"),
    ],
)
def test_cli_reports_config_errors_in_one_line_without_traceback(
    tmp_path: Path, mutate, expected: str
) -> None:
    data = _default()
    mutate(data)
    path = _write(tmp_path, data)
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--config", str(path), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=PROJECT,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0] and str(path) in lines[0]
