"""``rewards.trl``: rlad's verifiable rewards as TRL reward functions — the weighted sum TRL forms equals rlad's
total, and TRL's own GRPOTrainer trains a few steps with them (on the tiny text model: TRL cannot run the VLM
on this machine, its processor needs torchvision)."""

import json

import numpy as np
import pytest

from rewards import RewardMix
from rewards.trl import sample_column, trl_rewards
from rlad.config import load_config
from rlad.data.questions import sft_target

pytest.importorskip("trl")


def test_weighted_trl_rewards_are_rlads_total(small_benchmark):
    _, samples = small_benchmark
    samples = samples[:6]
    spec = {"format": {"weight": 0.5}, "detection": {"weight": 2.0, "alpha": 1.0}, "answer": {"weight": 1.0}}
    completions = [sft_target(s) for s in samples[:3]] + ["<seg></seg><think>x</think><answer>B</answer>", "junk", ""]
    funcs, weights = trl_rewards(spec)
    assert [f.__name__ for f in funcs] == ["format", "detection", "answer"] and weights == [0.5, 2.0, 1.0]
    column = [sample_column(s) for s in samples]
    plain = [f(prompts=[""] * 6, completions=completions, rlad_sample=column) for f in funcs]
    chat = [[{"role": "assistant", "content": c}] for c in completions]  # TRL's conversational form
    assert plain == [f(prompts=[""] * 6, completions=chat, rlad_sample=column) for f in funcs]
    total = sum(w * np.array(v) for w, v in zip(weights, plain, strict=True))
    want = RewardMix(spec).score(completions, samples).total
    np.testing.assert_allclose(total, want, rtol=0, atol=1e-12)
    assert total[0] > total[-1] == 0.0  # the SFT target earns, an empty completion does not


def test_a_dataset_without_the_sample_column_is_named():
    funcs, _ = trl_rewards({"format": {}})
    with pytest.raises(KeyError, match="rlad_sample"):
        funcs[0](prompts=["p"], completions=["c"], index=[0])


def test_trl_grpo_trainer_trains_with_rlads_rewards(small_benchmark, tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from rlad.data.sources import rl_samples
    from rlad.inputs import system_prompt
    from rlad.policy import resolve_model_path

    root, _ = small_benchmark
    config = load_config(None, [f"data.root={root}", "mask.grid=8", "model.image_size=224", "model.path=tiny",
                                "model.tiny.text_only=true", "data.text_only=true", "data.shots=0"])  # fmt: skip
    train, _ = rl_samples(config)
    funcs, weights = trl_rewards(config.rewards)
    system = {"role": "system", "content": system_prompt(config.output.blocks)}
    rows = [{"prompt": [system, {"role": "user", "content": s.question}], "rlad_sample": sample_column(s)}
            for s in train[:8]]  # fmt: skip
    args = GRPOConfig(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=8, num_generations=4,
        max_completion_length=12, learning_rate=1e-5, beta=0.0, use_cpu=True, bf16=False, logging_steps=1,
        save_strategy="no", report_to="none", seed=0, reward_weights=weights, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = GRPOTrainer(model=str(resolve_model_path(config.model)), reward_funcs=funcs, args=args,
                          train_dataset=Dataset.from_list(rows))  # fmt: skip
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "reward" in entry]
    assert len(logged) == 2
    for entry in logged:  # TRL logged each of rlad's rewards by name, and their weighted sum as its reward
        parts = {name: entry[f"rewards/{name}/mean"] for name in config.rewards}
        total = sum(w * parts[n] for w, n in zip(weights, config.rewards, strict=True))
        assert entry["reward"] == pytest.approx(total, abs=1e-5)
    assert json.loads(rows[0]["rlad_sample"])["sample_id"] == train[0].sample_id
