
import numpy as np
import pytest

import torch

from distforget.config import ResourcesConfig, replace
from distforget.training import Parallel, global_batches
from distforget.trial import StageCache, StageTask, run_trial, stage_key

pytestmark = pytest.mark.ray  # every test here starts or joins Ray


def test_shards_are_disjoint_and_cover_each_global_batch():
    for world in (1, 2, 3):
        seen = []
        for batch in global_batches(50, 16, epoch=2, seed=7):
            shards = [Parallel(r, world).shard(batch) for r in range(world)]
            flat = np.concatenate(shards)
            assert len(flat) == len(set(flat.tolist())) == len(batch)
            assert set(flat.tolist()) == set(batch.tolist())
            seen += flat.tolist()
        assert sorted(seen) == list(range(50))  # an epoch covers the data once
    assert not np.array_equal(np.concatenate(global_batches(50, 16, 0, 7)),
                              np.concatenate(global_batches(50, 16, 1, 7)))


def launch_forget(ray_cluster, prepared, cfg, workers, root):
    from distforget.distributed.train import ray_launcher

    ref = ray_cluster.put(prepared)
    cache = StageCache(str(root))
    key = stage_key(prepared.fingerprint, "forget", "three_stage", {}, None, "auto")
    resources = ResourcesConfig(workers=workers, cpus_per_worker=2 / workers * 0.9,
                                trial_cpus=0.1)
    launch = ray_launcher(ref, cache, resources, str(root / "train"), f"w{workers}")
    out = launch(cfg, [StageTask("forget", key, None)])[key]
    return out, cache, key


def test_two_workers_give_the_weights_of_one_at_the_same_global_batch(
        ray_cluster, tiny_prepared, tiny_cfg, tmp_path):
    # Two trained layers, plain fine-tuning (no LoRA), a few steps of global batch 8.
    cfg = replace(tiny_cfg, {"forget.epochs": 2, "forget.batch_size": 8, "forget.top_k": 2,
                             "forget.target_acc": 0.0, "forget.lr": 1e-3})
    one, cache, key = launch_forget(ray_cluster, tiny_prepared, cfg, 1, tmp_path / "one")
    two, _, _ = launch_forget(ray_cluster, tiny_prepared, cfg, 2, tmp_path / "two")
    assert one.meta["layers"] == two.meta["layers"]
    assert one.meta["steps"] == two.meta["steps"] > 2
    base = tiny_prepared.base_visual_state()
    moved = max((one.state[k] - base[k]).abs().max().item() for k in base
                if base[k].is_floating_point())
    assert moved > 1e-3  # training did change the weights...
    # ...and two workers agree with one up to float reduction order (gloo sums two shards).
    for k in one.state:
        assert torch.allclose(one.state[k], two.state[k], atol=1e-4, rtol=1e-4), k
    # Rank 0 wrote the stage output into the shared cache.
    assert StageCache(str(tmp_path / "one")).has("forget", key)


def test_the_second_trial_with_the_same_forget_settings_reuses_the_stage(
        ray_cluster, tiny_prepared, tiny_cfg, tmp_path):
    from distforget.distributed.train import ray_evaluator, ray_launcher

    ref = ray_cluster.put(tiny_prepared)
    resources = ResourcesConfig(workers=1, cpus_per_worker=1.0, trial_cpus=0.1)
    launched = []

    def trial(cfg, name):
        cache = StageCache(str(tmp_path / "stages"))
        launch = ray_launcher(ref, cache, resources, str(tmp_path / "train"), name)

        def counting(cfg_, tasks):
            launched.append([t.stage for t in tasks])
            return launch(cfg_, tasks)
        return run_trial(tiny_prepared, cfg, launch=counting, cache=cache,
                         evaluate=ray_evaluator(ref, cache, resources, "auto"))

    first = trial(tiny_cfg, "t1")
    second = trial(replace(tiny_cfg, {"remind.temperature": 3.0}), "t2")
    assert launched == [["forget", "remind"], ["remind"]]
    assert second.stages["forget"]["cached"] and second.record()["stage_cache_hits"] == 1
    f1 = StageCache(str(tmp_path / "stages")).get("forget", first.stages["forget"]["key"])
    assert second.stages["forget"]["key"] == first.stages["forget"]["key"]
    # No training step ran for the reused stage: the record counts only the remind steps.
    assert second.record()["train_steps"] == second.stages["remind"]["steps"]
    assert f1 is not None


def test_local_paths_are_refused_on_a_multi_node_cluster():
    from distforget.distributed.cluster import check_storage, max_concurrent
    from distforget.errors import ConfigError

    res = ResourcesConfig(workers=2, cpus_per_worker=4, gpus_per_worker=1, trial_cpus=0.5)
    two_nodes = [{"Alive": True, "NodeID": "a", "Resources": {"CPU": 8, "GPU": 0}},
                 {"Alive": True, "NodeID": "b", "Resources": {"CPU": 32, "GPU": 4}}]
    with pytest.raises(ConfigError, match="set output.shared: true"):
        check_storage("/home/me/runs", False, res, nodes=two_nodes)
    check_storage("s3://bucket/runs", False, res, nodes=two_nodes)
    check_storage("/mnt/nfs/runs", True, res, nodes=two_nodes)
    # A CPU-only head of an autoscaling cluster: workers will run elsewhere.
    head_only = [{"Alive": True, "NodeID": "a", "Resources": {"CPU": 8}}]
    with pytest.raises(ConfigError, match="local path"):
        check_storage("runs", False, res, nodes=head_only)
    laptop = [{"Alive": True, "NodeID": "a", "Resources": {"CPU": 8, "GPU": 1}}]
    check_storage("runs", False, res, nodes=laptop)
    # Concurrency: 16 GPUs, 2 workers x 1 GPU per trial -> 8 trials at once.
    assert max_concurrent(res, {"CPU": 128, "GPU": 16}, 100, None) == 8
    assert max_concurrent(res, {"CPU": 8}, 100, None) == 1
    assert max_concurrent(res, {"CPU": 8}, 100, 5) == 5
