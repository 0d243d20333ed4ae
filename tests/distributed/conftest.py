import os

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray instance for the session (2 CPUs), shut down at the end."""
    import ray

    from distforget.distributed.cluster import TRAIN_ENV

    for k, v in TRAIN_ENV.items():
        os.environ.setdefault(k, v)
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {**TRAIN_ENV,
                                           "DISTFORGET_CACHE": os.environ["DISTFORGET_CACHE"],
                                           "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()
