"""``rlad train`` on a local Ray with the tiny model: the run folder, the logged scalars, the replay store,
weight sync and its freshness check, resume after a crash matching an uninterrupted run, data-parallel
learners, and the SFT stage inside the run."""

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import torch

from rlad.cluster import Cluster, actor_name
from rlad.config import ConfigError, load_config
from rlad.faults import LearnerLostError, NonFiniteError
from rlad.learner import Rollout, learner_batch
from rlad.logbook import read_metrics
from rlad.replay import Group
from rlad.run_dir import last_checkpoint, save_checkpoint
from rlad.train import run_train, step_prompts
from rollout.weight_sync import ObjectStoreSync, StaleWeightsError


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def _config(root, run_dir, tiny_dir, *more):
    return load_config(
        None,
        [f"data.root={root}", "mask.grid=8", "model.image_size=224", "data.shots=0", "data.eval_fraction=0.25",
         f"model.path={tiny_dir}", f"train.warm_start={tiny_dir}", f"train.run_dir={run_dir}",
         "generation.max_new_tokens=12", "grpo.steps=4", "grpo.prompts_per_step=2", "grpo.group_size=3",
         "grpo.lr=1e-3", "learner.micro_batch_size=3", "train.save_steps=2", "train.eval_samples=3",
         "train.eval_sampled=2", "rollout.num_cpus=0.5", "learner.num_cpus=0.5", *more],
    )  # fmt: skip


@pytest.fixture(scope="module")
def full_run(small_benchmark, tiny_dir, tmp_path_factory):
    root, _ = small_benchmark
    run_dir = tmp_path_factory.mktemp("train") / "run"
    # GRPO alone, from model.path itself (the paper's "GRPO" ablation; no SFT stage in a test)
    report = run_train(_config(root, run_dir, tiny_dir, "train.warm_start=base"), show_progress=False)
    return run_dir, report, root


def test_the_run_folder_holds_everything(full_run, tiny_dir):
    run_dir, report, _ = full_run
    assert load_config(run_dir / "config.yaml").grpo.steps == 4  # the snapshot reloads
    assert report["warm_start"] == str(tiny_dir) and not (run_dir / "sft").exists()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    state = json.loads((run_dir / "checkpoints/step-000004/state.json").read_text())
    assert state == {"step": 4, "version": 4, "data_position": 8}
    rows = report["rows"]
    assert set(rows) == {"warm_start", "warm_start_sampled", "grpo", "grpo_sampled"}
    assert rows["grpo"]["n"] == 3 and rows["grpo_sampled"]["n"] == 3 * 2  # eval_sampled=2 per question
    assert (run_dir / "eval/grpo.jsonl").is_file() and (run_dir / "eval/warm_start_sampled.jsonl").is_file()
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(run_dir / "final", local_files_only=True)
    assert (run_dir / "final/tokenizer.json").is_file() and (run_dir / "final/rlad.yaml").is_file()
    assert sum(p.numel() for p in model.parameters()) > 0


def test_every_group_is_stored_with_its_version(full_run):
    run_dir, _, _ = full_run
    table = pq.read_table(run_dir / "replay").to_pandas()
    assert len(table) == 4 * 2 * 3  # steps x prompts x group size: nothing dropped
    assert sorted(table["step"].unique()) == [0, 1, 2, 3]
    # step s was sampled by the weights after s updates: the version the rollout engine reported
    assert (table["policy_version"] == table["step"]).all()
    assert all(len(t) == len(lp) for t, lp in zip(table["token_ids"], table["logprobs"], strict=True))


def test_metrics_cover_rewards_losses_and_phases(full_run):
    run_dir, _, _ = full_run
    metrics = read_metrics(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]
    wanted = {"reward/total", "reward/format", "reward/detection", "reward/answer", "detect/patch_F1",
              "detect/answer_acc", "train/kl", "train/entropy", "train/clip_fraction", "rollout/response_length",
              "train/grad_norm", "train/lr", "train/tokens_per_s", "rollout/tokens_per_s", "time/generate",
              "time/reward", "time/learn", "time/sync", "train/logprob_mismatch", "sync/megabytes"}  # fmt: skip
    assert wanted <= set(metrics[0])
    assert all(m["train/logprob_mismatch"] < 1e-3 for m in metrics)  # engines never sampled with stale weights
    # the freshness check ran after the first sync (and every rollout.freshness_steps): engine == learner
    assert metrics[0]["sync/freshness_mean_abs"] < 1e-5 and "time/freshness" in metrics[0]
    assert "sync/freshness_mean_abs" not in metrics[1]
    assert not any(k.startswith("async/") for m in metrics for k in m)  # a synchronous run logs no staleness
    assert all(m["train/tis_mean"] == pytest.approx(1.0, abs=1e-4) for m in metrics)  # engine == learner: w = 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert wanted <= tags and not any(t.startswith("async/") for t in tags)
    # the warm start and the GRPO policy have tags of their own (not one eval/ curve told apart by step)
    assert {"eval/warm_start/total", "eval/grpo/total", "eval_sampled/warm_start/detection",
            "eval_sampled/grpo/detection"} <= tags  # fmt: skip
    assert [e.step for e in events.Scalars("eval/warm_start/total")] == [0]
    assert [e.step for e in events.Scalars("eval/grpo/total")] == [4]
    # held-out examples: completions as text, overlays as images, at each evaluation; the run's hparams
    text_tags = set(events.Tags()["tensors"])
    assert {"examples/warm_start/text_summary", "examples/grpo/text_summary"} <= text_tags
    shown = events.Tensors("examples/grpo/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "<answer>" in shown or "right answer" in shown
    images = set(events.Tags()["images"])
    assert {"examples/warm_start/0", "examples/grpo/0"} <= images and len(images) == 2 * 3  # 3 held-out questions
    assert events.Images("examples/grpo/0")[0].width > 384  # the image beside its text panel
    from tensorboard.plugins.hparams import plugin_data_pb2

    assert "_hparams_/session_start_info" in events.summary_metadata, "no HParams session"
    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    ).session_start_info
    assert start.hparams["grpo.steps"].number_value == 4 and start.hparams["grpo.group_size"].number_value == 3
    assert start.hparams["model.tiny"].string_value  # a nested mapping is shown as its text


def test_the_same_config_twice_on_one_machine_gives_the_same_run(full_run, tiny_dir, tmp_path):
    """Same-machine determinism, the only kind rlad claims (another CPU gives other floats): a second run of
    the same config repeats every logged number — rewards, losses, gradient norms, held-out rows — exactly."""
    run_dir, report, root = full_run
    again = run_train(_config(root, tmp_path / "again", tiny_dir, "train.warm_start=base"), show_progress=False)
    timing = ("time/", "tokens_per_s", "time_", "seconds")
    first, second = read_metrics(run_dir / "metrics.jsonl"), read_metrics(tmp_path / "again/metrics.jsonl")
    assert len(first) == len(second) == 4
    for a, b in zip(first, second, strict=True):
        assert set(a) == set(b)
        for key in a:
            if not any(t in key for t in timing):
                assert a[key] == b[key], (a["step"], key, a[key], b[key])
    assert {g: {k: v for k, v in r.items() if not any(t in k for t in timing)} for g, r in again["rows"].items()} == {
        g: {k: v for k, v in r.items() if not any(t in k for t in timing)} for g, r in report["rows"].items()
    }


def _crash_at_step_3(config, monkeypatch) -> None:
    """Run ``config`` until the third learning call raises, as a crash would (checkpoint at step 2 is on disk)."""
    learn, calls = Cluster.learn, {"n": 0}

    def crash_at_step_3(self, rollouts):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash")
        return learn(self, rollouts)

    monkeypatch.setattr(Cluster, "learn", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run_train(config, show_progress=False)
    monkeypatch.setattr(Cluster, "learn", learn)


def test_resume_after_a_crash_matches_the_uninterrupted_run(full_run, tiny_dir, tmp_path, monkeypatch):
    _, _, root = full_run
    run_dir = tmp_path / "run"
    config = _config(root, run_dir, tiny_dir)
    _crash_at_step_3(config, monkeypatch)
    assert last_checkpoint(run_dir).name == "step-000002"
    assert len(pq.read_table(run_dir / "replay")) == 3 * 6  # step 2's groups were stored before the crash
    with pytest.raises(ConfigError, match="resume="):
        run_train(config, show_progress=False)  # a second fresh start into the same folder is refused
    run_train(config, resume=True, show_progress=False)

    reference = read_metrics(full_run[0] / "metrics.jsonl")
    resumed = read_metrics(run_dir / "metrics.jsonl")
    assert [m["step"] for m in resumed] == [0, 1, 2, 3]
    for a, b in zip(reference, resumed, strict=True):
        for key in ("reward/total", "train/loss", "train/grad_norm", "rollout/response_length"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    # the store holds each step once; the crashed attempt's step-2 part was set aside, not deleted
    assert len(pq.read_table(run_dir / "replay")) == 4 * 6
    assert len(list((run_dir / "replay-superseded").iterdir())) == 1


def _same_as_uninterrupted(full_run, run_dir):
    """The run's per-step numbers equal the uninterrupted run's, and its store holds each step's groups once."""
    reference = read_metrics(full_run[0] / "metrics.jsonl")
    got = read_metrics(run_dir / "metrics.jsonl")
    assert [m["step"] for m in got] == [0, 1, 2, 3]
    for a, b in zip(reference, got, strict=True):
        for key in ("reward/total", "train/loss", "train/grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    table = pq.read_table(run_dir / "replay").to_pandas()
    assert len(table) == 4 * 6 and len(set(zip(table["step"], table["group_id"], strict=True))) == 4 * 2
    return got


def _kill_when(ready, name, restart):
    """A thread that kills the named actor of this Ray session once ``ready()`` holds (fault injection)."""

    def run():
        deadline = time.monotonic() + 300
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        ray.kill(ray.get_actor(name), no_restart=not restart)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _steps_logged(run_dir, n):
    return lambda: len(read_metrics(run_dir / "metrics.jsonl")) >= n if (run_dir / "metrics.jsonl").is_file() else False


def test_a_rollout_worker_killed_mid_run_is_restarted_on_current_weights(full_run, tiny_dir, tmp_path):
    """Ray restarts the worker, it gets the current weights (verified) before generating again, and the run
    ends exactly as the uninterrupted one: no group lost, none stored twice."""
    _, _, root = full_run
    run_dir = tmp_path / "run"
    killer = _kill_when(_steps_logged(run_dir, 1), actor_name(run_dir, "rollout", 0), restart=True)
    run_train(_config(root, run_dir, tiny_dir, "train.warm_start=base"), show_progress=False)
    killer.join()
    metrics = _same_as_uninterrupted(full_run, run_dir)
    assert metrics[-1]["faults/rollout_restarts"] == 1
    assert all(m["train/logprob_mismatch"] < 1e-3 for m in metrics)  # the restarted engine sampled fresh weights


def test_a_dead_learner_stops_the_run_or_rlad_resumes_from_the_checkpoint(full_run, tiny_dir, tmp_path):
    _, _, root = full_run
    stopped = tmp_path / "stopped"
    killer = _kill_when(lambda: last_checkpoint(stopped) is not None, actor_name(stopped, "learner", 0), False)
    with pytest.raises(LearnerLostError, match=rf"last complete checkpoint is step-000002.*resume={stopped}"):
        run_train(_config(root, stopped, tiny_dir, "train.warm_start=base"), show_progress=False)
    killer.join()
    assert (stopped / "checkpoints/step-000002/state.json").is_file() and not (stopped / "final").exists()

    healed = tmp_path / "healed"
    config = _config(root, healed, tiny_dir, "train.warm_start=base", "train.max_learner_restarts=1")
    killer = _kill_when(lambda: last_checkpoint(healed) is not None, actor_name(healed, "learner", 0), False)
    run_train(config, show_progress=False)
    killer.join()
    _same_as_uninterrupted(full_run, healed)
    assert (healed / "final/model.safetensors").is_file()


def test_an_unwritable_or_full_run_folder_is_refused_before_anything_starts(full_run, tiny_dir, tmp_path, monkeypatch):
    _, _, root = full_run
    (tmp_path / "a-file").write_text("in the way")
    with pytest.raises(ConfigError, match=r"train.run_dir .*a-file/run cannot be written"):
        run_train(_config(root, tmp_path / "a-file" / "run", tiny_dir), show_progress=False)
    import rlad.run_dir

    monkeypatch.setattr(rlad.run_dir.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12, 10**3))
    with pytest.raises(
        ConfigError,
        match=r"0.00 GiB free, but 2 checkpoints \(\+1 being written\) and the exported policy .* need about",
    ):
        run_train(_config(root, tmp_path / "run", tiny_dir), show_progress=False)
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_that_fails_to_write_keeps_the_previous_one(tmp_path):
    @ray.remote(num_cpus=0)
    class FullDisk:
        def save(self, folder):
            raise OSError(28, "No space left on device")

    @ray.remote(num_cpus=0)
    class Fine:
        def save(self, folder):
            Path(folder).mkdir(parents=True)
            (Path(folder) / "weights").write_text("w")

    save_checkpoint(tmp_path, [Fine.remote()], {"step": 2}, keep=2)
    with pytest.raises(OSError, match=r"step-000004 could not be written .*No space left.*step-000002, is intact"):
        save_checkpoint(tmp_path, [FullDisk.remote()], {"step": 4}, keep=2)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000002"]  # no partial left either
    assert last_checkpoint(tmp_path).name == "step-000002"


def test_a_diverged_policy_stops_the_run_by_name(full_run, tiny_dir, tmp_path):
    """lr 1e30 blows the weights up at the first step: the next generation would sample from NaN probabilities.
    The run stops with that said, naming the checkpoint to resume from, not with a sampler's stack trace."""
    _, _, root = full_run
    run_dir = tmp_path / "run"
    config = _config(root, run_dir, tiny_dir, "grpo.lr=1e30", "grpo.steps=3", "train.save_steps=1",
                     "train.eval_samples=0")  # fmt: skip
    with pytest.raises(NonFiniteError, match=r"step \d: the policy diverged .* Checkpoints on disk: step-000001"):
        run_train(config, show_progress=False)


def test_async_rollout_learns_one_version_behind_with_tis(full_run, tiny_dir, tmp_path):
    """Async mode: step t+1 is generated (by version t) while step t learns, so every group after the first is
    exactly one version stale, logged, stored with the version that sampled it, and corrected by TIS."""
    _, _, root = full_run
    run_dir = tmp_path / "async"
    run_train(_config(root, run_dir, tiny_dir, "train.async_rollout=true", "train.eval_samples=0"), show_progress=False)
    metrics = read_metrics(run_dir / "metrics.jsonl")
    assert [m["async/staleness_max"] for m in metrics] == [0, 1, 1, 1]
    assert all(0.5 < m["train/tis_mean"] <= 2.0 for m in metrics) and "time/generate_ahead" in metrics[0]
    versions = {row["step"]: row["policy_version"] for row in pq.read_table(run_dir / "replay").to_pylist()}
    assert versions == {0: 0, 1: 0, 2: 1, 3: 2}
    assert (run_dir / "final" / "config.json").is_file()


def test_a_greedy_baseline_run_measures_each_sample_against_its_prompts_greedy_completion(full_run, tiny_dir, tmp_path):
    """grpo.baseline greedy (async, to take the look-ahead path too): every group is stored with its prompt's
    greedy completion (index -1, no advantage), each sample's advantage is its total less that completion's,
    and the greedy rewards are logged."""
    _, _, root = full_run
    run_dir = tmp_path / "greedy"
    config = _config(root, run_dir, tiny_dir, "grpo.baseline=greedy", "grpo.advantage_scale=none",
                     "train.async_rollout=true", "train.eval_samples=0")  # fmt: skip
    run_train(config, show_progress=False)
    rows = pq.read_table(run_dir / "replay").to_pylist()
    assert len(rows) == 4 * 2 * (3 + 1)  # 4 steps x 2 prompts x (3 samples + the greedy one)
    for gid in {r["group_id"] for r in rows}:
        group = [r for r in rows if r["group_id"] == gid]
        (greedy,) = [r for r in group if r["index"] == -1]
        assert greedy["advantage"] is None and greedy["token_ids"]
        for r in group:
            if r["index"] >= 0:
                assert r["advantage"] == pytest.approx(r["total"] - greedy["total"])
    metrics = read_metrics(run_dir / "metrics.jsonl")
    greedy_totals = [[r["total"] for r in rows if r["step"] == s and r["index"] == -1] for s in range(4)]
    assert [m["reward_greedy/total"] for m in metrics] == pytest.approx([np.mean(t) for t in greedy_totals])
    assert all(0.0 <= m["batch/beats_greedy"] <= 1.0 for m in metrics)


def test_an_async_run_resumes_after_a_crash(full_run, tiny_dir, tmp_path, monkeypatch):
    """A crash while step 3's rollout runs ahead: the resumed run regenerates step 3 with the checkpoint's
    weights (no lag, as documented), stores every step once and finishes."""
    _, _, root = full_run
    run_dir = tmp_path / "async"
    config = _config(root, run_dir, tiny_dir, "train.async_rollout=true", "train.eval_samples=0")
    _crash_at_step_3(config, monkeypatch)
    run_train(config, resume=True, show_progress=False)
    metrics = read_metrics(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]
    assert [m["async/staleness_max"] for m in metrics] == [0, 1, 0, 1]
    table = pq.read_table(run_dir / "replay").to_pandas()
    assert len(table) == 4 * 6 and len(set(zip(table["step"], table["group_id"], strict=True))) == 4 * 2


@pytest.mark.parametrize("lora_sync", ["merged", "adapter"])
def test_lora_grpo_engines_sample_with_the_learners_adapters(full_run, tiny_dir, tmp_path, lora_sync):
    """GRPO with LoRA adapters (ZeRO-2): the engines get the adapters merged into the weights (by broadcast) or
    as adapters written to the run folder, and the freshness check after every step finds their log-probs equal
    to the LoRA learner's; the exported step checkpoint and the final policy are plain Qwen2.5-VL checkpoints
    with the adapters merged."""
    from safetensors.torch import load_file

    from rewards import known_rewards, reward
    from rlad.export import export_policy

    if "brevity" not in known_rewards():  # a signal even a random-init policy's groups disagree on

        @reward("brevity")
        def brevity(completion: str, sample) -> float:
            return -len(completion) / 100

    _, _, root = full_run
    run_dir = tmp_path / "lora"
    config = _config(root, run_dir, tiny_dir, "model.lora.r=4", "model.lora.alpha=8", "model.freeze_vision=true",
                     "learner.zero_stage=2", "rollout.weight_sync=broadcast", "rollout.freshness_steps=1",
                     "train.eval_samples=0", "grpo.steps=2", "train.save_steps=1",
                     "rewards.brevity.weight=1.0", f"rollout.lora_sync={lora_sync}")  # fmt: skip
    run_train(config, show_progress=False)
    metrics = read_metrics(run_dir / "metrics.jsonl")
    assert all(m["sync/freshness_mean_abs"] < 1e-5 for m in metrics)
    assert metrics[-1]["train/grad_norm"] > 0
    if lora_sync == "adapter":  # only the adapters travelled: ~1 % of the weights' bytes, the last 2 versions kept
        assert metrics[-1]["sync/megabytes"] < 0.05 * 6.9
        assert sorted(p.name for p in (run_dir / "adapters").iterdir()) == ["v000001", "v000002"]
    final = load_file(run_dir / "final" / "model.safetensors")
    assert not any("lora" in k or "base_layer" in k for k in final)
    exported = load_file(export_policy(run_dir, tmp_path / "exported", step=2) / "model.safetensors")
    for name, tensor in final.items():
        torch.testing.assert_close(exported[name].to(tensor.dtype), tensor, msg=name)
    base = load_file(Path(tiny_dir) / "model.safetensors")
    assert any(not torch.equal(final[k], base[k]) for k in base if "q_proj.weight" in k)  # the adapters learned


def test_stale_weights_fail_the_sync():
    @ray.remote
    class Learner:
        def shared_state(self):
            return {"w": (np.ones(3, np.float32), "float32")}

        def fingerprint(self):
            return 3.0

    @ray.remote
    class StuckWorker:  # a worker that keeps its old weights whatever it is sent
        def load_shared(self, state, version):
            return 0.0, 12

    with pytest.raises(StaleWeightsError, match=r"worker 0 .* version 7"):
        ObjectStoreSync().sync([Learner.remote()], [StuckWorker.remote()], 7)


def test_two_learners_take_the_same_step_as_one(full_run, tiny_dir, tmp_path):
    """Data parallel over two Ray learner actors (gloo): the batch split in two gives one learner's gradient
    (its norm is taken after DeepSpeed's all-reduce), and the two ranks hold identical weights afterwards."""
    _, _, root = full_run
    one = Cluster(_config(root, tmp_path, tiny_dir, "learner.workers=1"), str(tiny_dir))
    samples = read_samples(root)[:2]
    completions = one.generate(samples, 3, greedy=False, seed=1)
    rollouts = [Rollout(samples[i // 3], c.token_ids, c.logprobs, i % 3 - 1.0) for i, c in enumerate(completions)]
    expected = one.learn(rollouts)
    one.shutdown()
    two = Cluster(_config(root, tmp_path, tiny_dir, "learner.workers=2", "learner.num_cpus=0.25"), str(tiny_dir))
    got = two.learn(rollouts)
    assert got["grad_norm"] == pytest.approx(expected["grad_norm"], rel=1e-4)
    assert got["learn_tokens"] == expected["learn_tokens"]  # the ranks' shares add up to the batch
    first, second = (ray.get(learner.state_dict.remote()) for learner in two.learners)
    for name, tensor in first.items():
        torch.testing.assert_close(second[name], tensor, rtol=0, atol=0, msg=name)
    two.shutdown()


def read_samples(root):
    from rlad.data.readers import read_mmad

    return read_mmad(root / "mmad.json", root, grid=8, shots=0)[0]


def test_too_many_actors_for_the_cluster_is_named(full_run, tiny_dir, tmp_path):
    _, _, root = full_run
    with pytest.raises(
        ConfigError, match=r"rollout\.workers x rollout\.num_cpus .* = 4.5 CPUs, but the Ray cluster has 2"
    ):
        run_train(
            _config(root, tmp_path / "r", tiny_dir, "rollout.workers=4", "rollout.num_cpus=1"), show_progress=False
        )


def test_step_prompts_walk_seeded_epochs():
    seen = [step_prompts(10, s, 4, seed=3) for s in range(5)]
    flat = [i for step in seen for i in step]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))  # each epoch once
    assert seen == [step_prompts(10, s, 4, seed=3) for s in range(5)]  # a function of (seed, step) alone
    assert flat[:10] != flat[10:20] and step_prompts(10, 0, 4, seed=4) != seen[0]


def _group(gid, version, totals):
    from conftest import make_sample

    n = len(totals)
    mean = float(np.mean(totals))
    return Group(gid, version, version, make_sample(sample_id=gid), ["c"] * n, [[1, 2]] * n, [[-0.1, -0.2]] * n,
                 {"answer": list(totals)}, list(totals), [t - mean for t in totals])  # fmt: skip


def test_learner_batch_dynamic_sampling_and_replay():
    config = load_config(None, ["grpo.group_size=2"])
    fresh = [_group("a", 5, (1.0, 0.0)), _group("flat", 5, (1.0, 1.0))]
    past = [_group("old-good", 4, (0.0, 2.0)), _group("too-old", 0, (0.0, 2.0)), _group("old-flat", 4, (1.0, 1.0))]
    rollouts, kept, replayed = learner_batch(config, fresh, past, 5, 5)
    assert (kept, replayed, len(rollouts)) == (2, 0, 4)  # defaults: every fresh group, nothing replayed
    dyn = load_config(None, ["grpo.group_size=2", "grpo.dynamic_sampling=true", "grpo.replay_share=0.5",
                             "grpo.max_staleness=2"])  # fmt: skip
    rollouts, kept, replayed = learner_batch(dyn, fresh, past, 5, 5)
    assert (kept, replayed) == (1, 1)  # "flat" dropped; "old-good" is the one replayable group
    assert [r.fresh for r in rollouts] == [True, True, False, False]
    assert [r.advantage for r in rollouts[2:]] == [-1.0, 1.0]


def test_rewards_in_ray_tasks_match_the_driver_even_with_every_cpu_reserved(small_benchmark):
    """Scoring in parallel gives the driver's numbers, in order, while the actors hold every CPU of the
    cluster (as during a run): the tasks must not wait for a free CPU."""
    from rewards import RewardMix
    from rlad.config import paper_rewards
    from rlad.data.questions import sft_target
    from rlad.scoring import ScoredRecord, score_records, score_records_on_ray

    _, samples = small_benchmark
    records = [ScoredRecord(sft_target(s) if i % 3 else "junk", s, "g") for i, s in enumerate(samples[:20])]

    @ray.remote(num_cpus=2)
    class Hog:
        def ready(self):
            return True

    hog = Hog.remote()
    ray.get(hog.ready.remote())
    parallel = score_records_on_ray(records, paper_rewards(), chunk=3)
    ray.kill(hog)
    assert parallel == score_records(records, RewardMix(paper_rewards()))
    assert len({s["total"] for s in parallel}) > 1


def test_a_metrics_line_cut_short_by_a_kill_is_left_out(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "reward/total": 1.0}\n{"step": 1, "reward/total": 2.0}\n{"step": 2, "rew')
    assert [m["step"] for m in read_metrics(path)] == [0, 1]
    path.write_text('{"step": 0}\n{"ste\n{"step": 2}\n')  # damage anywhere else is not a kill: it is an error
    with pytest.raises(json.JSONDecodeError):
        read_metrics(path)


def test_ablation_helpers_rescore_a_run_and_draw_its_curves(full_run, tmp_path):
    """experiments/ablations: the cheap reward-mix form on a real replay store, and the reward-curve PNG."""
    import sys
    from types import SimpleNamespace

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "ablations"))
    from common import _slug, reward_curves
    from reward_mix import rescored_table

    run_dir = full_run[0]
    table = rescored_table(run_dir, SimpleNamespace(config=None, overrides=[]))
    rows = [line for line in table.splitlines() if line.startswith("| w/o") or line.startswith("| All")]
    assert len(rows) == 3 and rows[-1].split("|")[-3].strip() == "0.000"  # the trained mix never disagrees with itself
    png = reward_curves({"run": [run_dir / "metrics.jsonl"] * 2}, tmp_path / "curves.png", "t", smooth=2)
    assert png.stat().st_size > 1000
    assert _slug(["rewards.answer.weight=0"]) != _slug(["rewards.detection.weight=0"])
