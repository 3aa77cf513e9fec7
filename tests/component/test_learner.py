"""The learner (one DeepSpeed rank, gloo on CPU) on the tiny model: exact batch loss across micro-batches,
the direction of a GRPO step, the KL and engine-logprob paths, and checkpoint round trips."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from rlad.config import ConfigError, load_config
from rlad.learner import Learner, Rollout, loss_units
from rlad.logprobs import token_logprobs
from rollout.transformers_engine import TransformersEngine


def _config(root, *more):
    return load_config(
        None,
        [f"data.root={root}", "mask.grid=8", "model.image_size=224", "data.shots=0", "generation.max_new_tokens=10",
         "grpo.lr=1e-3", "grpo.weight_decay=0.0", "learner.micro_batch_size=2", *more],
    )  # fmt: skip


def _learner(small_benchmark, tiny_dir, *more):
    root, _ = small_benchmark
    config = _config(root, *more)
    learner = Learner.from_config(config, str(tiny_dir))
    learner.setup()
    learner.run_config = config  # the test's record of the run it belongs to (an export reads the run's snapshot)
    return learner


@pytest.fixture(scope="module")
def rollouts(small_benchmark, tiny_dir):
    """Six sampled completions of two questions with hand-set advantages (two groups of three)."""
    root, samples = small_benchmark
    learner = Learner.from_config(_config(root), str(tiny_dir))
    learner.setup()
    engine = TransformersEngine(learner.policy.model, learner.builder, learner.generation)
    chosen = samples[:2]  # data.shots=0: the builder leaves their reference images out
    completions = engine.generate(chosen, n=3, seed=0)
    advantages = [1.0, -0.5, -0.5, 0.0, 1.2, -1.2]
    pairs = zip(completions, advantages, strict=True)
    return [Rollout(chosen[i // 3], c.token_ids, c.logprobs, a) for i, (c, a) in enumerate(pairs)]


def _gradients(learner, batch, micro_batches, monkeypatch, metrics=None):
    """The summed gradient ``learn`` hands to the optimizer (the step itself is replaced by a recorder); the
    step's metrics go into ``metrics`` when given."""
    seen = {}

    def record():
        seen.update({n: p.grad.clone() for n, p in learner.engine.module.named_parameters() if p.grad is not None})
        for p in learner.engine.module.parameters():
            p.grad = None

    monkeypatch.setattr(learner.engine, "step", record)
    logged = learner.learn(batch, loss_units(batch, learner.grpo.aggregation), micro_batches)
    if metrics is not None:
        metrics.update(logged)
    return seen


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "dr_grpo"])
def test_micro_batches_add_up_to_one_batch_loss(small_benchmark, tiny_dir, rollouts, monkeypatch, aggregation):
    learner = _learner(small_benchmark, tiny_dir, f"grpo.aggregation={aggregation}")
    whole = _gradients(learner, rollouts, 1, monkeypatch)
    pieces = _gradients(learner, rollouts, 3, monkeypatch)
    assert whole.keys() == pieces.keys() and whole
    for name in whole:
        torch.testing.assert_close(pieces[name], whole[name], rtol=1e-4, atol=1e-7, msg=name)


def _completion_logp(learner, rollouts):
    batch = learner.builder.collate([learner.builder.encode_completion(r.sample, r.token_ids) for r in rollouts])
    with torch.no_grad():
        logp, mask = token_logprobs(learner.engine.module, batch)
    return (logp * mask).sum(-1)


def test_a_step_favours_positive_advantages(small_benchmark, tiny_dir, rollouts):
    # a small step (Adam moves every weight by ~lr), so the first-order change dominates
    learner = _learner(small_benchmark, tiny_dir, "grpo.lr=1e-5")
    before = _completion_logp(learner, rollouts)
    metrics = learner.learn(rollouts, loss_units(rollouts, "token_mean"), 2)
    change = _completion_logp(learner, rollouts) - before
    advantages = torch.tensor([r.advantage for r in rollouts])
    assert learner.version == 1
    assert float((advantages * change).sum()) > 0  # the surrogate objective went up
    assert change[4] > change[5] and change[0] > change[1]  # +1.2 gained on -1.2, +1.0 on -0.5
    # one epoch with old log-probs from the learner: the ratio is exactly 1, nothing is clipped
    assert metrics["ratio_mean"] == pytest.approx(1.0) and metrics["clip_fraction"] == 0.0
    assert metrics["logprob_mismatch"] < 1e-4  # the engine sampled with these very weights
    assert metrics["grad_norm"] > 0 and metrics["entropy"] > 0 and metrics["lr"] == pytest.approx(1e-5)


@pytest.mark.parametrize("micro_batches", [1, 4])
def test_shared_prompts_give_the_plain_layouts_gradient_and_metrics(small_benchmark, tiny_dir, rollouts, monkeypatch,
                                                                    micro_batches):  # fmt: skip
    """``learner.share_prompts`` changes how a micro-batch runs, not what it computes: the same summed gradient and
    the same logged metrics as one padded row per completion, with the KL to a reference on. In 4 micro-batches
    of 2 the groups of 3 are cut across micro-batches and the last one is an empty stand-in."""
    results = []
    for share in ("true", "false"):
        learner = _learner(small_benchmark, tiny_dir, f"learner.share_prompts={share}", "grpo.kl_coef=0.05")
        metrics = {}
        results.append((_gradients(learner, rollouts, micro_batches, monkeypatch, metrics), metrics))
    (shared, shared_metrics), (plain, plain_metrics) = results
    assert shared.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(shared[name], plain[name], atol=1e-6, rtol=1e-4, msg=name)
    for key in ("loss", "policy_loss", "kl", "entropy", "logprob_mismatch", "ratio_mean"):
        assert shared_metrics[key] == pytest.approx(plain_metrics[key], rel=1e-4, abs=1e-6), key


def test_a_bf16_policy_samples_and_learns_on_fp32_master_weights(small_benchmark, tiny_dir):
    """``model.dtype=bfloat16`` on a CPU: engine and learner hold bf16 weights (the fast matmuls), DeepSpeed keeps
    fp32 master weights and optimizer state (an update below bf16's resolution is not lost), and the engine's
    log-probs agree with the learner's within the freshness tolerance."""
    _, samples = small_benchmark
    learner = _learner(small_benchmark, tiny_dir, "model.dtype=bfloat16", "grpo.lr=1e-3")
    assert next(learner.engine.module.parameters()).dtype == torch.bfloat16
    masters = [p for group in learner.engine.optimizer.fp32_groups for p in group]
    assert masters and all(p.dtype == torch.float32 for p in masters)
    engine = TransformersEngine(learner.policy.model, learner.builder, learner.generation)
    completions = engine.generate(samples[:2], n=3, seed=0)
    batch = [Rollout(samples[i // 3], c.token_ids, c.logprobs, a)
             for i, (c, a) in enumerate(zip(completions, [1.0, -0.5, -0.5, 0.0, 1.2, -1.2], strict=True))]  # fmt: skip
    before = [p.detach().clone() for p in masters]
    metrics = learner.learn(batch, loss_units(batch, "token_mean"), 2)
    assert metrics["logprob_mismatch"] < learner.run_config.rollout.freshness_tolerance
    assert metrics["skipped_steps"] == 0 and metrics["grad_norm"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, masters, strict=True))


def test_kl_to_the_reference_and_engine_old_logprobs(small_benchmark, tiny_dir, rollouts):
    learner = _learner(small_benchmark, tiny_dir, "grpo.kl_coef=0.1", "grpo.old_logprobs=engine",
                       "grpo.epochs_per_step=2")  # fmt: skip
    assert learner.reference is not None
    first = learner.learn(rollouts, loss_units(rollouts, "token_mean"), 2)
    assert first["kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before the first update
    second = learner.learn(rollouts, loss_units(rollouts, "token_mean"), 2)
    assert second["kl"] > 0  # two epochs later the policy has moved away from the reference
    assert second["ratio_mean"] != pytest.approx(1.0, abs=1e-6)  # engine's numbers are of older weights now
    assert _learner(small_benchmark, tiny_dir).reference is None  # kl_coef 0: no reference model at all


def test_checkpoint_round_trip_continues_identically(small_benchmark, tiny_dir, rollouts, tmp_path):
    units = loss_units(rollouts, "token_mean")
    a = _learner(small_benchmark, tiny_dir)
    a.learn(rollouts, units, 2)
    a.save(str(tmp_path / "ckpt"))
    a.learn(rollouts, units, 2)
    b = _learner(small_benchmark, tiny_dir)
    assert b.load(str(tmp_path / "ckpt")) == 1
    b.learn(rollouts, units, 2)  # the optimizer's moments came back too, or this step would differ
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, msg=name)
    assert a.fingerprint() == b.fingerprint()


def _exported_from_checkpoint(learner, tiny_dir, tmp_path):
    """``rlad export RUN --step 1`` of a learner checkpoint laid out as rlad train leaves it; the weights."""
    from safetensors.torch import load_file

    from rlad.config import save_config
    from rlad.export import export_policy

    run = tmp_path / "run"
    step = run / "checkpoints" / "step-000001"
    learner.save(str(step / "learner"))
    (step / "state.json").write_text(json.dumps({"step": 1, "version": 1}))
    save_config(learner.run_config, run / "config.yaml")
    (run / "report.json").write_text(json.dumps({"warm_start": str(tiny_dir)}))
    return load_file(export_policy(run, tmp_path / "exported", step=1) / "model.safetensors")


def test_export_consolidates_a_learner_checkpoint(small_benchmark, tiny_dir, rollouts, tmp_path):
    learner = _learner(small_benchmark, tiny_dir)
    learner.learn(rollouts, loss_units(rollouts, "token_mean"), 2)
    exported = _exported_from_checkpoint(learner, tiny_dir, tmp_path)
    for name, tensor in learner.state_dict().items():
        if name in exported:  # a tied lm_head is stored once
            torch.testing.assert_close(exported[name], tensor, msg=name)
    assert len(exported) >= len(learner.state_dict()) - 1


def _skips_a_poisoned_step_without_a_trace(small_benchmark, tiny_dir, rollouts, *more):
    """A NaN advantage (a broken reward) poisons loss and gradients: the step is skipped, and the next good step
    lands exactly where it lands for a learner that never saw the poisoned one (weights, Adam moments, lr)."""
    units = loss_units(rollouts, "token_mean")
    poisoned = [dataclasses.replace(r, advantage=float("nan")) for r in rollouts]
    a = _learner(small_benchmark, tiny_dir, *more)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    assert a.learn(poisoned, units, 2)["skipped_steps"] == 1
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert a.learn(rollouts, units, 2)["skipped_steps"] == 0
    b = _learner(small_benchmark, tiny_dir, *more)
    b.learn(rollouts, units, 2)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, msg=name)


def test_a_nonfinite_step_is_skipped_without_a_trace(small_benchmark, tiny_dir, rollouts):
    _skips_a_poisoned_step_without_a_trace(small_benchmark, tiny_dir, rollouts)


def test_lora_with_zero3_is_refused_with_the_keys_named(small_benchmark, tiny_dir):
    root, _ = small_benchmark
    with pytest.raises(ConfigError, match=r"model\.lora\.r > 0 with learner\.zero_stage 3"):
        _config(root, "model.lora.r=4", "learner.zero_stage=3")  # refused at load, before any learner is built


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_stages_learn_and_gather_full_weights(small_benchmark, tiny_dir, rollouts, tmp_path, stage):
    """ZeRO-2 and ZeRO-3 on CPU (gloo, one rank): a step moves the weights, the state dict sent to the rollout
    engines holds whole tensors (ZeRO-3 gathers its partitions), and a checkpoint reloads."""
    learner = _learner(small_benchmark, tiny_dir, f"learner.zero_stage={stage}")
    start = {k: v.clone() for k, v in learner.state_dict().items()}  # on CPU the dict may share the weights
    metrics = learner.learn(rollouts, loss_units(rollouts, "token_mean"), 2)
    after = learner.state_dict()
    assert metrics["grad_norm"] > 0
    assert all(after[k].shape == v.shape and after[k].numel() > 0 for k, v in start.items())
    assert any(not torch.equal(after[k], v) for k, v in start.items())
    learner.save(str(tmp_path / "ckpt"))
    again = _learner(small_benchmark, tiny_dir, f"learner.zero_stage={stage}")
    assert again.load(str(tmp_path / "ckpt")) == 1
    reloaded = again.state_dict()
    for name, tensor in after.items():
        torch.testing.assert_close(reloaded[name], tensor, msg=name)
    _skips_a_poisoned_step_without_a_trace(small_benchmark, tiny_dir, rollouts, f"learner.zero_stage={stage}")
    exported = _exported_from_checkpoint(learner, tiny_dir, tmp_path)  # ZeRO shards consolidated to fp32
    for name, tensor in after.items():
        if name in exported:
            torch.testing.assert_close(exported[name], tensor, msg=name)


def test_a_padding_share_runs_but_counts_for_nothing(small_benchmark, tiny_dir, rollouts, monkeypatch):
    """A rank left without completions (a batch smaller than the learner count) still runs its passes, so the
    collectives line up, and adds no gradient."""
    import dataclasses

    learner = _learner(small_benchmark, tiny_dir, "grpo.kl_coef=0.1")
    padding = [dataclasses.replace(rollouts[0], padding=True)]
    grads = _gradients(learner, padding, 1, monkeypatch)
    assert grads and all(float(g.abs().max()) == 0.0 for g in grads.values())


def test_learners_on_one_node_meet_through_a_file_and_across_nodes_over_tcp():
    from rollout.transport import NodeAddress, rendezvous_url

    one = [NodeAddress("n1", "10.0.0.5", 4000, "/tmp"), NodeAddress("n1", "10.0.0.5", 4001, "/tmp")]
    assert rendezvous_url(one, "abc") == "file:///tmp/rlad-rendezvous-abc"  # no network port opened by rlad
    two = [NodeAddress("n1", "10.0.0.5", 4000, "/tmp"), NodeAddress("n2", "10.0.0.6", 4001, "/tmp")]
    assert rendezvous_url(two, "abc") == "tcp://10.0.0.5:4000"  # rank 0's node


def test_block_credit_reaches_the_tokens_of_each_block(small_benchmark, tiny_dir, rollouts, monkeypatch):
    learner = _learner(small_benchmark, tiny_dir)
    tokenizer = learner.builder.tokenizer
    text = "<seg>(1, 1)</seg><think>a dent</think><answer>A</answer>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    shares = {"all": 0.25, "seg": 1.0, "think": -1.0, "answer": -1.0}
    r = Rollout(rollouts[0].sample, ids, [0.0] * len(ids), 0.25, block_advantages=shares)
    mask = torch.zeros(2, len(ids) + 2, dtype=torch.bool)
    mask[0, 2:] = True  # left padding, as the learner's batches have it
    mask[1, 2:] = True
    adv = learner._advantages([r, dataclasses.replace(r, block_advantages=None)], mask, torch.float32)
    pieces = [tokenizer.decode([t], skip_special_tokens=True) for t in ids]
    assert "".join(pieces) == text
    seg_end = next(i for i in range(len(ids)) if "".join(pieces[: i + 1]).endswith("</seg>"))
    assert adv[0, 2 : 2 + seg_end + 1].tolist() == [1.25] * (seg_end + 1)  # format's share + detection's
    assert adv[0, 2 + seg_end + 1 : -1].tolist() == [-0.75] * (len(ids) - seg_end - 2)  # + answer's
    assert adv[0, -1].item() == 0.25  # the end of text: in no block
    assert adv[1, 2:].tolist() == [0.25] * len(ids) and not adv[:, :2].any()  # no shares: the completion's
    # a completion without a <seg> block (the untrained policy's ten tokens) learns from the whole-completion
    # share alone, as GRPO would have it
    assert not any("</seg>" in tokenizer.decode(x.token_ids, skip_special_tokens=True) for x in rollouts)
    same = [dataclasses.replace(x, block_advantages={"all": x.advantage, "seg": 9.0}) for x in rollouts]
    plain = _gradients(learner, rollouts, 1, monkeypatch)
    shared = _gradients(learner, same, 1, monkeypatch)
    for name in plain:
        torch.testing.assert_close(shared[name], plain[name], msg=name)


def test_cell_credit_adds_to_the_advantage_of_the_seg_tokens(small_benchmark, tiny_dir, rollouts):
    from rlad.credit import cell_credits

    learner = _learner(small_benchmark, tiny_dir, "grpo.cell_credit=0.5", "grpo.cell_credit_rule=precision")
    tokenizer = learner.builder.tokenizer
    text = "<seg>(1, 1)-(1, 2), (5, 5)</seg><think>a dent</think><answer>A</answer>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    sample = rollouts[0].sample
    truth = np.zeros_like(sample.mask)
    truth[1, 1:3] = True  # the first run right, the second wrong, nothing missed
    r = Rollout(dataclasses.replace(sample, mask=truth, anomalous=True), ids, [0.0] * len(ids), 0.25)
    mask = torch.zeros(1, len(ids) + 2, dtype=torch.bool)
    mask[0, 2:] = True  # left padding, as the learner's batches have it
    adv = learner._advantages([r], mask, torch.float32)[0, 2:].tolist()
    pieces = [tokenizer.decode([t], skip_special_tokens=True) for t in ids]
    close = next(i for i in range(len(ids)) if "".join(pieces[: i + 1]).endswith("</seg>"))
    assert adv[0] == 0.25 and adv[1] == pytest.approx(0.75)  # "<seg>": the completion's; the right run: +0.5
    assert adv[close] == pytest.approx(0.75) and adv[close - 1] == pytest.approx(-0.25)  # close +0.5, wrong run -0.5
    assert adv[close + 1 :] == [0.25] * (len(ids) - close - 1)  # think, answer, end of text: untouched
    assert adv == pytest.approx([0.25 + c for c in cell_credits(pieces, truth, 0.5, "precision")])
    gain = _learner(small_benchmark, tiny_dir, "grpo.cell_credit=0.5")  # the default rule: F1 1 -> 2*2/(3+2)
    assert gain._advantages([r], mask, torch.float32)[0, 2:].tolist() == pytest.approx(
        [0.25 + c for c in cell_credits(pieces, truth, 0.5, "gain")]
    )
    assert gain._advantages([r], mask, torch.float32)[0, 3].item() == pytest.approx(0.75)
    off = _learner(small_benchmark, tiny_dir)  # grpo.cell_credit 0 (the default): GRPO's one advantage a completion
    assert off._advantages([r], mask, torch.float32).tolist() == [0.25]
