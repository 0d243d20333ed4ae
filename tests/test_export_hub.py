"""Exports in open_clip's Hugging Face Hub layout: loadable with open_clip alone (``local-dir:``
and ``hf-hub:``), a model card, normal file modes, and ``--push-to-hub`` through open_clip's own
helper up to the upload call (no network)."""

import importlib
import importlib.machinery
import json
import os
import stat
import subprocess
import sys
import types
from pathlib import Path

import open_clip
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from distforget import model_card
from distforget.config import RunConfig, replace
from distforget.export import export_point, main as export_main, push_to_hub
from distforget.model import ModelSpec, create
from distforget.training import StageOutput
from distforget.trial import StageCache

HUB_FILES = {"open_clip_model.safetensors", "open_clip_config.json", "README.md"}
KEY = "ab" * 32


def close(a, b):
    return abs(a - b) < 1e-4 * max(1.0, abs(b))


def checksum(state) -> float:
    return float(sum(v.double().sum() for v in state.values() if v.is_floating_point()))


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def results_row(**extra) -> pd.Series:
    metrics = {"forget_acc": 0.04, "retain_acc": 0.91, "zeroshot_acc": 0.93,
               "forget_sim": 0.12, "mia_auc": 0.52, "base_forget_acc": 0.99,
               "base_retain_acc": 0.92, "base_zeroshot_acc": 0.95}
    return pd.Series({"trial_id": "t0001", "source": "trial", "status": "ok",
                      "recipe": json.dumps({"method": "ft", "stages": {"baseline": KEY},
                                            "alpha": 1.0, "beta": 0.0}),
                      "params": json.dumps({"baseline.lr": 3e-4}), **metrics, **extra})


@pytest.fixture()
def run_folder(tmp_path):
    """A finished search's folder, as far as export reads it: run.json, base.safetensors and
    one cached stage (a fine-tuned image tower)."""
    torch.manual_seed(0)
    spec = ModelSpec("DF-RN-Tiny-32", False, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "test")
    base = create(spec).state_dict()
    run = tmp_path / "runs" / "cifar10-airplane-k0"
    run.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in base.items()}, str(run / "base.safetensors"))
    cfg = replace(RunConfig(), {"scenario.forget_class": "airplane",
                                "scenario.forget_subgroup": "k0",
                                "scenario.subgroups": "kmeans", "data.format": "cifar10"})
    (run / "run.json").write_text(json.dumps({
        "config": cfg.to_dict(), "model": {k: list(v) if isinstance(v, tuple) else v
                                           for k, v in spec.__dict__.items()},
        "base_metrics": {"forget_acc": 0.99, "retain_acc": 0.6, "zeroshot_acc": 0.7,
                         "forget_sim": 0.3, "mia_auc": 0.5}}))
    tuned = {k: v + 0.01 if v.is_floating_point() else v
             for k, v in base.items() if k.startswith("visual.")}
    StageCache(str(run / "stages")).put("baseline", KEY, StageOutput(state=tuned, meta={}))
    return run, {**base, **tuned}


def test_the_export_is_in_the_hub_layout_with_the_same_weights_twice(run_folder, tmp_path):
    run, expected = run_folder
    out = Path(export_point(str(run), results_row(), str(tmp_path / "exported"), "knee"))
    names = {p.name for p in out.iterdir()}
    assert HUB_FILES | {"model.safetensors", "distforget.json"} <= names
    hub, plain = load_file(str(out / "open_clip_model.safetensors")), load_file(
        str(out / "model.safetensors"))
    assert hub.keys() == plain.keys() == expected.keys()
    assert all(torch.equal(hub[k], expected[k]) and torch.equal(plain[k], expected[k])
               for k in expected)
    config = json.loads((out / "open_clip_config.json").read_text())
    assert config["model_cfg"]["vision_cfg"]["image_size"] == 32
    assert config["preprocess_cfg"]["mean"] == [0.5, 0.5, 0.5]


def test_open_clip_alone_loads_the_folder_through_local_dir(run_folder, tmp_path):
    run, expected = run_folder
    out = export_point(str(run), results_row(), str(tmp_path / "exported"), "knee")
    code = ("import sys, open_clip\n"
            f"model, _, pre = open_clip.create_model_and_transforms('local-dir:{out}')\n"
            f"tok = open_clip.get_tokenizer('local-dir:{out}')\n"
            "assert 'distforget' not in sys.modules\n"
            "print(float(sum(v.double().sum() for v in model.state_dict().values() "
            "if v.is_floating_point())), pre.transforms[0].size, tok(['a cat']).shape[1])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    total, size, context = proc.stdout.split()
    assert close(float(total), checksum(expected))
    assert size == "32" and context == "24"  # DF-RN-Tiny-32's image size and context length


def test_open_clip_loads_the_folder_as_a_hub_repository(run_folder, tmp_path, monkeypatch):
    run, expected = run_folder
    out = Path(export_point(str(run), results_row(), str(tmp_path / "exported"), "knee"))
    pretrained = importlib.import_module("open_clip.pretrained")
    asked = []

    def hub_download(repo_id, filename, revision=None, cache_dir=None, **_):
        asked.append((repo_id, filename))
        if repo_id != "me/df-airplane" or not (out / filename).is_file():
            raise FileNotFoundError(filename)
        return str(out / filename)

    monkeypatch.setattr(pretrained, "hf_hub_download", hub_download)
    model, _, _ = open_clip.create_model_and_transforms("hf-hub:me/df-airplane")
    assert close(checksum(model.state_dict()), checksum(expected))
    assert ("me/df-airplane", "open_clip_config.json") in asked
    assert ("me/df-airplane", "open_clip_model.safetensors") in asked


def test_exported_files_and_folders_get_the_umask_modes(run_folder, tmp_path, umask_022):
    run, _ = run_folder
    out = Path(export_point(str(run), results_row(), str(tmp_path / "exported"), "knee"))
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name
    # No temporary folder is left beside it.
    assert sorted(p.name for p in out.parent.iterdir()) == ["exported", "runs"]


def test_the_model_card_names_the_scenario_recipe_and_test_intervals(run_folder, tmp_path):
    run, _ = run_folder
    row = results_row(test_forget_acc=0.05, test_forget_acc_lo=0.01, test_forget_acc_hi=0.09,
                      test_retain_acc=0.9, test_retain_acc_lo=0.88, test_retain_acc_hi=0.92)
    out = Path(export_point(str(run), row, str(tmp_path / "exported"), "knee"))
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: open_clip" in card
    assert "forgotten: subgroup `k0` of class `airplane`" in card
    assert "method: `ft`" in card and "`baseline.lr` = 0.0003" in card
    header = next(line for line in card.splitlines() if line.startswith("| metric |"))
    assert "test 95% interval" in header
    forget_row = next(line for line in card.splitlines() if line.startswith("| `forget_acc`"))
    assert "| 0.040 | 0.990 | 0.050 | 0.010 to 0.090 |" in forget_row
    assert "local-dir:PATH" in card
    record = json.loads((out / "distforget.json").read_text())
    assert record["test"]["test_forget_acc_lo"] == 0.01


def test_without_test_metrics_the_card_has_no_test_columns():
    lines = model_card.metrics_table({"forget_acc": 0.1, "base_forget_acc": 0.9,
                                      "retain_acc": 0.8, "zeroshot_acc": float("nan")})
    assert "test" not in lines[0]
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["`forget_acc`",
                                                                  "`retain_acc`"]


class FakeHub:
    """The huggingface_hub functions open_clip's push helper calls, recording the upload."""

    def __init__(self, monkeypatch):
        self.uploads = []
        hub = importlib.import_module("open_clip.push_to_hf_hub")

        class EntryNotFound(Exception):
            pass

        class Tokenizer:  # open_clip swaps its default tokenizer for the Hub's CLIP one
            def __init__(self, name, **_):
                self.name = name

            def save_pretrained(self, dest):
                Path(dest, "tokenizer_config.json").write_text(json.dumps({"name": self.name}))

        def upload_folder(repo_id, folder_path, revision=None, create_pr=False,
                          commit_message=""):
            files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
            self.uploads.append({"repo_id": repo_id, "message": commit_message, "files": files})
            return f"https://huggingface.co/{repo_id}/commit/0"

        def no_file(*_, **__):
            raise EntryNotFound("README.md")

        def no_repo(*_, **__):
            raise RuntimeError("repository not found")

        for name, value in {
            "_has_hf_hub": True, "EntryNotFoundError": EntryNotFound, "HFTokenizer": Tokenizer,
            "create_repo": lambda repo_id, **_: f"https://huggingface.co/{repo_id}",
            "repo_type_and_id_from_hf_id": lambda url: (None, *url.split("/")[-2:]),
            "list_repo_files": no_repo, "get_hf_file_metadata": no_file,
            "hf_hub_url": lambda **_: "https://huggingface.co/x", "upload_folder": upload_folder,
        }.items():
            monkeypatch.setattr(hub, name, value, raising=False)
        fake = types.ModuleType("transformers")
        fake.__spec__ = importlib.machinery.ModuleSpec("transformers", None)
        monkeypatch.setitem(sys.modules, "transformers", fake)


def test_push_to_hub_goes_through_open_clips_helper_up_to_the_upload(run_folder, tmp_path,
                                                                     monkeypatch):
    run, expected = run_folder
    out = export_point(str(run), results_row(), str(tmp_path / "exported"), "knee")
    hub = FakeHub(monkeypatch)
    push_to_hub(out, "me/df-airplane")
    [upload] = hub.uploads
    assert upload["repo_id"] == "me/df-airplane"
    files = upload["files"]
    assert HUB_FILES <= set(files) and "open_clip_pytorch_model.bin" not in files
    (tmp_path / "up.safetensors").write_bytes(files["open_clip_model.safetensors"])
    uploaded = load_file(str(tmp_path / "up.safetensors"))
    assert all(torch.equal(uploaded[k], expected[k]) for k in expected)
    config = json.loads(files["open_clip_config.json"])
    assert config["model_cfg"] == json.loads(
        (Path(out) / "open_clip_config.json").read_text())["model_cfg"]
    readme = files["README.md"].decode()
    assert "# Model card for df-airplane" in readme
    assert "forgotten: subgroup `k0` of class `airplane`" in readme


def test_the_export_command_pushes_after_exporting(run_folder, tmp_path, monkeypatch, capsys):
    run, _ = run_folder
    from distforget import export

    monkeypatch.setattr(export, "select", lambda run, rule=None, trial=None:
                        (results_row(), "named by the test"))
    hub = FakeHub(monkeypatch)
    out = tmp_path / "exported"
    assert export_main(["--run", str(run), "--out", str(out), "--push-to-hub", "me/df"]) == 0
    assert (out / "open_clip_model.safetensors").is_file()
    assert [u["repo_id"] for u in hub.uploads] == ["me/df"]
    assert "hf-hub:me/df" in capsys.readouterr().out


def test_push_without_the_hub_extra_is_refused_before_the_export(run_folder, tmp_path,
                                                                  monkeypatch, capsys):
    run, _ = run_folder
    hub = importlib.import_module("open_clip.push_to_hf_hub")
    monkeypatch.setattr(hub, "_has_hf_hub", False)
    out = tmp_path / "exported"
    assert export_main(["--run", str(run), "--out", str(out), "--push-to-hub", "me/df"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'distforget[hub]'" in err[0]
    assert not out.exists()
