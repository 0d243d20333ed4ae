import json
import subprocess
import sys

import open_clip
import pytest
import yaml

from distforget.config import BASELINES
from distforget.objectives import METRICS


def run(args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "distforget.unlearn", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=1500)


@pytest.mark.slow
def test_no_arguments_compares_the_method_and_every_baseline(tmp_path):
    proc = run([], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "distforget_runs" / "embedded-default"
    records = json.loads((folder / "unlearn.json").read_text())
    assert [r["method"] for r in records] == ["three_stage", *BASELINES, "base"]
    for r in records:
        for m in METRICS:
            assert m in r and f"base_{m}" in r and f"test_{m}" in r and f"test_base_{m}" in r
        assert r["test_forget_acc_lo"] <= r["test_forget_acc"] <= r["test_forget_acc_hi"]
        assert r["wall_s"] >= 0
    three = records[0]
    # The method forgets the subgroup while keeping most of the rest (the full quality
    # figures are a benchmark's job; these bounds only catch a broken pipeline).
    assert three["forget_acc"] <= 0.2 < three["base_forget_acc"]
    assert three["zeroshot_acc"] >= 0.8 * three["base_zeroshot_acc"]
    assert "three_stage" in proc.stdout and f"wrote {folder / 'unlearn.json'}" in proc.stdout
    # Each method's checkpoint loads in open_clip.
    import distforget.model  # noqa: F401
    weights = folder / "unlearn" / "ga" / "model.safetensors"
    model = open_clip.create_model("DF-RN-Tiny-32", pretrained=str(weights))
    assert model is not None


@pytest.mark.slow  # runs the three stages on real CIFAR-10 images
def test_a_cifar10_scenario_runs_end_to_end(tmp_path, cifar_manifest):
    cfg = {
        "data": {"format": "parquet", "path": str(cifar_manifest)},
        "pretrain": {"epochs": 2, "batch_size": 64},
        "scenario": {"forget_class": "airplane", "forget_subgroup": "k1", "subgroups": "kmeans",
                     "num_subgroups": 2},
        "forget": {"epochs": 2, "fisher_samples": 8},
        "remind": {"epochs": 1, "bn_align_images": 8, "bn_align_steps": 3},
        "restore": {"grid": [0.0, 0.5, 1.0]},
    }
    (tmp_path / "cifar.yaml").write_text(yaml.safe_dump(cfg))
    proc = run(["--config", "cifar.yaml", "--method", "three_stage", "--json", "out.json",
                "--out", "ckpt"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = json.loads((tmp_path / "out.json").read_text())
    assert record["method"] == "three_stage"
    assert all(0.0 <= record[m] <= 1.0 for m in ("forget_acc", "retain_acc", "zeroshot_acc"))
    saved = json.loads((tmp_path / "ckpt" / "three_stage" / "distforget.json").read_text())
    assert saved["config"]["scenario"]["forget_subgroup"] == "k1"
    assert saved["recipe"]["method"] == "three_stage"


def test_unknown_method_is_refused_before_any_work(tmp_path):
    proc = run(["--method", "gradient_descent"], tmp_path)
    assert proc.returncode == 2 and "--method 'gradient_descent'" in proc.stderr
    assert not (tmp_path / "unlearn.json").exists() and not (tmp_path / "distforget_runs").exists()
