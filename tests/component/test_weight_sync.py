"""Weight sync by broadcast (learner rank 0 -> every engine, in buckets, ZeRO-3 gathered first) and the
freshness check, for real on a local Ray with the tiny model: gloo here, the same code with NCCL on GPUs."""

import numpy as np
import pytest
import ray
import torch

from rlad.cluster import Cluster, plan_placement
from rlad.config import ConfigError, load_config
from rlad.learner import Rollout
from rollout.transport import TensorMeta, buckets, fingerprint, from_shared, to_shared
from rollout.weight_sync import StaleWeightsError


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def _config(root, tiny_dir, *more):
    return load_config(
        None,
        [f"data.root={root}", "mask.grid=8", "model.image_size=224", "data.shots=0", f"model.path={tiny_dir}",
         "generation.max_new_tokens=8", "grpo.lr=1e-3", "grpo.group_size=2", "learner.micro_batch_size=4",
         "rollout.num_cpus=0.25", "learner.num_cpus=0.25", *more],
    )  # fmt: skip


def _samples(root):
    from rlad.data.readers import read_mmad

    return read_mmad(root / "mmad.json", root, grid=8, shots=0)[0][:2]


def test_buckets_split_by_bytes_and_keep_a_large_tensor_alone():
    meta = [TensorMeta("a", "float32", (10,)), TensorMeta("b", "float32", (10,)), TensorMeta("c", "bfloat16", (100,)),
            TensorMeta("d", "float32", (5,))]  # fmt: skip
    assert [m.nbytes for m in meta] == [40, 40, 200, 20]
    assert buckets(meta, 80) == [[0, 1], [2], [3]]
    assert buckets(meta, 10**6) == [[0, 1], [2], [3]]  # one dtype per bucket: each travels as one flat tensor
    assert buckets(meta[:2], 10**6) == [[0, 1]] and buckets(meta[:2], 40) == [[0], [1]]


def test_the_object_store_form_keeps_every_dtype_and_value():
    state = {"w": torch.randn(3, 4), "b": torch.randn(5).to(torch.bfloat16), "i": torch.arange(4)}
    shared = to_shared(state)
    assert all(isinstance(a, np.ndarray) for a, _ in shared.values())
    back = from_shared(shared)
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor)
    assert fingerprint(back.values()) == fingerprint(state.values())


def _one_step(cluster, root):
    samples = _samples(root)
    completions = cluster.generate(samples, 2, greedy=False, seed=1)
    rollouts = [Rollout(samples[i // 2], c.token_ids, c.logprobs, 1.0 - 2 * (i % 2)) for i, c in enumerate(completions)]
    cluster.learn(rollouts)
    return samples, completions


@pytest.mark.parametrize("stage", [0, 3])
def test_broadcast_puts_the_learners_weights_into_every_engine(small_benchmark, tiny_dir, stage):
    root, _ = small_benchmark
    config = _config(root, tiny_dir, "rollout.weight_sync=broadcast", "rollout.workers=2", "rollout.sync_bucket_mb=0.1",
                     f"learner.zero_stage={stage}")  # fmt: skip
    cluster = Cluster(config, str(tiny_dir))
    try:
        megabytes = cluster.sync_weights(0)
        samples, completions = _one_step(cluster, root)
        assert cluster.sync_weights(1) == pytest.approx(megabytes)  # every parameter, in several 0.1 MB buckets
        learner = ray.get(cluster.learners[0].state_dict.remote())
        probe = (samples[0], completions[0].token_ids)
        fresh = cluster.check_freshness(*probe)
        assert fresh["sync/freshness_mean_abs"] < 1e-5
        assert all(v == 1 for v in ray.get([w.policy_version.remote() for w in cluster.workers]))

        # worker 1 falls back to the weights it started with: the freshness check names it
        stale = {k: v.clone() for k, v in learner.items()}
        stale["model.language_model.layers.0.mlp.down_proj.weight"] += 0.5
        ray.get(cluster.workers[1].load_weights.remote(stale, 1))
        with pytest.raises(StaleWeightsError, match=r"rollout worker 1 .* version 1"):
            cluster.check_freshness(*probe)
        cluster.sync_weights(2)  # the next sync mends it
        assert cluster.check_freshness(*probe)["sync/freshness_mean_abs"] < 1e-5
    finally:
        cluster.shutdown()


def test_a_revived_worker_rejoins_the_broadcast(small_benchmark, tiny_dir):
    """A restarted rollout worker is a new process: the broadcast group is formed again around it."""
    root, _ = small_benchmark
    config = _config(root, tiny_dir, "rollout.weight_sync=broadcast", "rollout.workers=2")
    cluster = Cluster(config, str(tiny_dir))
    try:
        cluster.sync_weights(0)
        samples, completions = _one_step(cluster, root)
        cluster.sync_weights(1)
        ray.kill(cluster.workers[0], no_restart=False)
        out = cluster.generate(samples, 1, greedy=True, seed=0)  # revives worker 0 and syncs it (version 1)
        assert {c.policy_version for c in out} == {1}
        cluster.sync_weights(2)  # the whole group again
        assert cluster.check_freshness(samples[0], completions[0].token_ids)["sync/freshness_mean_abs"] < 1e-5
    finally:
        cluster.shutdown()


def test_colocated_placement_pairs_each_worker_with_its_learner(small_benchmark, tiny_dir):
    root, _ = small_benchmark
    config = _config(root, tiny_dir, "train.placement=colocate", "rollout.workers=2", "learner.workers=2",
                     "rollout.num_gpus=0", "rollout.resources={}")  # fmt: skip
    plan = plan_placement(config)
    assert plan.bundles == [{"CPU": 0.5}, {"CPU": 0.5}] and plan.rollout == plan.learner == [0, 1]
    split = plan_placement(_config(root, tiny_dir, "rollout.workers=2", "learner.num_gpus=1"))
    assert split.bundles == [{"CPU": 0.25}, {"CPU": 0.25}, {"CPU": 0.25, "GPU": 1.0}] and split.learner == [2]
    cluster = Cluster(config, str(tiny_dir))
    try:
        table = ray.util.placement_group_table(cluster.placement_group)
        assert table["state"] == "CREATED" and len(table["bundles"]) == 2
        cluster.sync_weights(0)
        assert len(cluster.generate(_samples(root), 2, greedy=False, seed=0)) == 4
    finally:
        cluster.shutdown()
    assert ray.util.placement_group_table(cluster.placement_group)["state"] == "REMOVED"


def test_cluster_settings_that_do_not_fit_together_are_named():
    with pytest.raises(ConfigError, match=r"colocate .* rollout\.workers \(2\) must equal learner\.workers \(1\)"):
        load_config(None, ["train.placement=colocate", "rollout.workers=2"])
    with pytest.raises(ConfigError, match=r"broadcast .* rollout\.num_gpus is 0, learner\.num_gpus 1"):
        load_config(None, ["rollout.weight_sync=broadcast", "learner.num_gpus=1"])
    with pytest.raises(ConfigError, match=r"tensor_parallel_size 2 needs rollout\.num_gpus >= 2"):
        load_config(None, ["rollout.backend=vllm", "rollout.num_gpus=1", "rollout.vllm.tensor_parallel_size=2"])
    with pytest.raises(ConfigError, match=r"offload_params needs learner\.zero_stage 3"):
        load_config(None, ["learner.offload_params=true", "learner.zero_stage=2"])
    with pytest.raises(ConfigError, match=r"sleep_level 2 discards .* rollout\.lora_sync adapter"):
        load_config(None, ["model.lora.r=4", "model.freeze_vision=true", "rollout.lora_sync=adapter",
                           "rollout.vllm.sleep_level=2"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"model\.freeze_vision=true"):
        load_config(None, ["model.lora.r=4", "rollout.lora_sync=adapter"])
    with pytest.raises(
        ConfigError, match=r"key 'rollout.backend': Invalid value 'sglang', expected one of \['transformers', 'vllm'\]"
    ):
        load_config(None, ["rollout.backend=sglang"])
    assert np.isclose(
        load_config(None, ["rollout.vllm.gpu_memory_utilization=0.3"]).rollout.vllm.gpu_memory_utilization, 0.3
    )
