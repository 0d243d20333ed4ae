"""Duplicate keys in any YAML distforget reads (run configs, search spaces, overrides) are
refused with the key and its lines, instead of PyYAML's silent last-value-wins."""

import subprocess
import sys

import pytest

from distforget.config import load_config, parse_overrides, read_yaml
from distforget.errors import ConfigError
from distforget.search_space import load_space


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_config_with_a_duplicate_key_is_refused_naming_the_key_and_lines(tmp_path):
    path = write(tmp_path, "dup.yaml", "forget:\n  lr: 1.0e-3\n  epochs: 2\n  lr: 2.0e-3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "duplicate key 'lr'" in message
    assert "line 4" in message and "first at line 2" in message
    assert "\n" not in message


def test_a_duplicate_section_is_refused_too(tmp_path):
    path = write(tmp_path, "dup.yaml", "forget: {lr: 1.0e-3}\nremind: {}\nforget: {epochs: 2}\n")
    with pytest.raises(ConfigError, match=r"line 3.*duplicate key 'forget' \(first at line 1\)"):
        read_yaml(path)


def test_duplicates_inside_one_flow_mapping_are_caught(tmp_path):
    path = write(tmp_path, "dup.yaml", "forget: {lr: 1.0e-3, lr: 2.0e-3}\n")
    with pytest.raises(ConfigError, match="duplicate key 'lr'"):
        read_yaml(path)


def test_merge_keys_may_still_be_overridden(tmp_path):
    path = write(tmp_path, "merge.yaml",
                 "defaults: &d {lr: 1.0e-3, epochs: 2}\nforget:\n  <<: *d\n  lr: 2.0e-3\n")
    assert read_yaml(path)["forget"] == {"lr": 2.0e-3, "epochs": 2}


def test_the_same_key_in_different_mappings_is_fine(tmp_path):
    path = write(tmp_path, "ok.yaml", "forget: {lr: 1.0e-3}\nremind: {lr: 1.0e-4}\n")
    cfg = load_config(path)
    assert (cfg.forget.lr, cfg.remind.lr) == (1e-3, 1e-4)


def test_a_search_space_with_a_duplicate_param_is_refused(tmp_path):
    path = write(tmp_path, "space.yaml",
                 "params:\n"
                 "  forget.lr: {type: float, low: 1.0e-4, high: 1.0e-3, log: true}\n"
                 "  forget.top_k: {type: int, low: 1, high: 3}\n"
                 "  forget.lr: {type: float, low: 1.0e-5, high: 1.0e-4, log: true}\n")
    with pytest.raises(ConfigError, match=r"line 4.*duplicate key 'forget\.lr' "
                                          r"\(first at line 2\)"):
        load_space(str(path))


def test_an_override_value_with_a_duplicate_key_is_one_line():
    with pytest.raises(ConfigError) as err:
        parse_overrides(["restore={alpha: 0.5, alpha: 0.7}"])
    assert "duplicate key 'alpha'" in str(err.value) and "\n" not in str(err.value)


def test_the_command_prints_one_line_and_exits_2(tmp_path):
    path = write(tmp_path, "dup.yaml", "search:\n  num_trials: 4\n  num_trials: 8\n")
    proc = subprocess.run([sys.executable, "-m", "distforget.search", "--config", str(path)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "duplicate key 'num_trials'" in lines[0], proc.stderr
    assert not (tmp_path / "distforget_runs").exists()
