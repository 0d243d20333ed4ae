"""``python -m distforget.unlearn`` writes under the run's output folder."""

import json

import pytest

from distforget.errors import ConfigError
from distforget.unlearn import main, output_paths
from tests.factories import TINY

SMALL = [f"{k}={json.dumps(v)}" for k, v in TINY.items()]


def test_two_configs_run_from_one_folder_keep_their_own_records(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name, seed in (("first", 0), ("second", 1)):
        assert main(["--method", "ft", *SMALL, f"output.name={name}",
                     f"baseline.seed={seed}"]) == 0
        run = tmp_path / "distforget_runs" / name
        assert f"wrote {run / 'unlearn.json'}" in capsys.readouterr().out
        assert (run / "unlearn" / "ft" / "model.safetensors").is_file()
    first, second = (json.loads((tmp_path / "distforget_runs" / n / "unlearn.json").read_text())
                     for n in ("first", "second"))
    assert [r["method"] for r in first] == [r["method"] for r in second] == ["ft"]
    saved = [json.loads((tmp_path / "distforget_runs" / n / "unlearn" / "ft" /
                         "distforget.json").read_text()) for n in ("first", "second")]
    assert [s["config"]["output"]["name"] for s in saved] == ["first", "second"]
    assert not (tmp_path / "unlearn.json").exists()


def test_explicit_paths_win_and_remote_storage_needs_them(tmp_path):
    from distforget.config import load_config

    cfg = load_config(None, {"output.storage": str(tmp_path), "output.name": "r"})
    assert output_paths(cfg, None, None) == (tmp_path / "r" / "unlearn.json",
                                             tmp_path / "r" / "unlearn")
    assert output_paths(cfg, "x.json", "") == (tmp_path.__class__("x.json"), None)
    remote = load_config(None, {"output.storage": "s3://bucket/runs"})
    with pytest.raises(ConfigError, match="unlearn writes to a local folder"):
        output_paths(remote, None, None)
    assert output_paths(remote, "x.json", "ckpt")[1].name == "ckpt"


def test_a_search_may_share_the_folder_unlearn_wrote(tmp_path):
    from distforget.run_folder import RunFolder

    run = tmp_path / "run"
    (run / "unlearn" / "ft").mkdir(parents=True)
    (run / "unlearn.json").write_text("[]")
    assert RunFolder(str(run)).check_resumable(None, "id", "space") is None
    (run / "other.txt").write_text("")
    with pytest.raises(ConfigError, match="holds no distforget search"):
        RunFolder(str(run)).check_resumable(None, "id", "space")
