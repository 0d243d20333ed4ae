"""The pretraining cache key covers every input that changes the weights."""

import numpy as np
import pandas as pd
import pytest

from distforget.config import DataConfig, ModelConfig, PretrainConfig
from distforget.data.load import load_data
from distforget.pretraining import cache_key, ensure_pretrained, split_rows
from distforget.zeroshot import CIFAR10_TEMPLATES
from tests.factories import cifar_frame


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pretrain-cache")
    frame = pd.concat([cifar_frame("train", 4).assign(split="train"),
                       cifar_frame("test", 1).assign(split="test")], ignore_index=True)
    path = folder / "small.parquet"
    frame[["image", "class_name", "split"]].to_parquet(path, index=False)
    return path


@pytest.mark.slow  # pretrains small CLIPs from scratch
def test_a_changed_image_size_pretrains_anew(manifest, cache_dir, cpu):
    cfg = PretrainConfig(epochs=1, batch_size=16)
    model = ModelConfig()
    templates = CIFAR10_TEMPLATES[:2]
    logs: list[str] = []
    paths = []
    for size in (None, 24, None):  # native 32 px, then stored at 24 px, then 32 px again
        data = load_data(DataConfig(format="parquet", path=str(manifest), image_size=size),
                         cache_dir)
        logs.clear()
        paths.append(ensure_pretrained(model, cfg, data, templates, cpu, cache_dir,
                                       log=logs.append))
        trained = any(line.startswith("pretraining") for line in logs)
        assert trained == (len(paths) < 3), (size, logs)
    assert paths[0] != paths[1] and paths[0] == paths[2]


def test_the_key_covers_knobs_model_data_and_rows(manifest, cache_dir):
    data = load_data(DataConfig(format="parquet", path=str(manifest)), cache_dir)
    rows, _ = split_rows(data)
    templates = CIFAR10_TEMPLATES[:2]
    base = cache_key(ModelConfig(), PretrainConfig(), data, rows, templates)
    assert base == cache_key(ModelConfig(), PretrainConfig(), data, rows, templates)
    relabelled = data.table.copy()
    relabelled.loc[len(relabelled) - 1, "class_name"] = "truck?"  # a held-out row's label
    others = [
        cache_key(ModelConfig(name="DF-ViT-Tiny-32"), PretrainConfig(), data, rows, templates),
        cache_key(ModelConfig(), PretrainConfig(lr=2e-3), data, rows, templates),
        cache_key(ModelConfig(), PretrainConfig(seed=1), data, rows, templates),
        cache_key(ModelConfig(), PretrainConfig(), data, rows[1:], templates),
        cache_key(ModelConfig(), PretrainConfig(), data, rows, templates[:1]),
        cache_key(ModelConfig(), PretrainConfig(),
                  type(data)(np.asarray(data.images)[:, :24, :24], data.table), rows, templates),
        cache_key(ModelConfig(), PretrainConfig(), type(data)(data.images, relabelled), rows,
                  templates),
    ]
    assert len({base, *others}) == len(others) + 1
