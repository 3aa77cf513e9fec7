"""The SFT stage on the tiny model: a real (short) run, resume, atomic export, and bad SFT files."""

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from rlad.config import ConfigError, load_config
from rlad.data.readers import DataError
from rlad.data.render import DEFECT_COLOURS, DEFECT_SHAPES
from rlad.data.sources import read_sft_jsonl, sft_examples
from rlad.grounding import head_state
from rlad.policy import load_policy
from rlad.sft import defect_kinds, defect_label, label_parts, last_complete_checkpoint, run_sft, save_policy


def _config(root, out, *more):
    return load_config(
        None,
        [f"data.root={root}", "mask.grid=8", "model.image_size=224", "data.eval_fraction=0.25",
         "sft.batch_size=2", "sft.save_steps=2", "sft.logging_steps=1", "sft.eval_samples=2",
         "generation.max_new_tokens=8", f"sft.output_dir={out}", *more],
    )  # fmt: skip


@pytest.fixture(scope="module")
def first_run(small_benchmark, tmp_path_factory):
    root, _ = small_benchmark
    out = tmp_path_factory.mktemp("sft")
    return out, run_sft(_config(root, out, "sft.max_steps=3")), root


def test_sft_trains_evaluates_and_exports_a_loadable_policy(first_run, tiny_dir):
    out, report, _ = first_run
    assert report["train"]["steps"] == 3 and report["train"]["resumed_from"] is None
    assert set(report["rows"]) == {"chance", "before", "after"}
    assert report["rows"]["after"]["n"] == 2
    assert json.loads((out / "report.json").read_text())["train"]["steps"] == 3
    assert (out / "eval_after.jsonl").is_file() and (out / "rlad.yaml").is_file()
    final = load_policy(load_config(None, [f"model.path={out / 'final'}", "model.image_size=224"]).model)
    start = load_policy(load_config(None, [f"model.path={tiny_dir}"]).model)
    moved = [not torch.equal(a, b) for a, b in zip(final.model.parameters(), start.model.parameters(), strict=True)]
    assert any(moved)
    assert final.tokenizer.chat_template == start.tokenizer.chat_template  # exported with its template


def test_sft_logs_loss_and_throughput_to_tensorboard(first_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _, _ = first_run
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate", "train/train_tokens_per_second"} <= tags
    assert len(events.Scalars("train/loss")) == 3


def test_sft_resumes_from_the_last_complete_checkpoint(first_run):
    out, _, root = first_run
    cut = out / "checkpoint-9"  # a save cut off mid-write: no trainer_state.json
    cut.mkdir()
    (cut / "model.safetensors").write_bytes(b"half")
    report = run_sft(_config(root, out, "sft.max_steps=5"))
    assert report["train"]["resumed_from"].endswith("checkpoint-3")
    assert report["train"]["steps"] == 5
    assert "before" not in report["rows"]  # the untrained row is not re-measured on a resumed run
    assert not cut.exists() and list(out.glob("incomplete-checkpoint-9-*"))  # moved aside, not deleted


def test_resume_restores_the_checkpoint_weights(first_run, tmp_path):
    """With no step left to run, a resumed run must export exactly the checkpoint's weights (transformers'
    Trainer alone would silently restart from the initial weights on Qwen2.5-VL)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    out, _, root = first_run
    ckpt = last_complete_checkpoint(out)
    step = int(ckpt.name.split("-")[1])
    copy = tmp_path / "run"
    shutil.copytree(ckpt, copy / ckpt.name)
    report = run_sft(_config(root, copy, f"sft.max_steps={step}", "sft.eval_samples=0"))
    assert report["train"]["resumed_from"] == str(copy / ckpt.name)
    saved = Qwen2_5_VLForConditionalGeneration.from_pretrained(copy / ckpt.name).state_dict()
    final = Qwen2_5_VLForConditionalGeneration.from_pretrained(copy / "final").state_dict()
    assert saved.keys() == final.keys()
    assert all(torch.equal(saved[k], final[k]) for k in saved)


def test_last_complete_checkpoint_on_empty_folders(tmp_path):
    assert last_complete_checkpoint(tmp_path / "absent") is None
    assert last_complete_checkpoint(tmp_path) is None


def test_failed_export_leaves_the_previous_policy(tmp_path, tiny_policy):
    out = tmp_path / "final"
    out.mkdir()
    (out / "config.json").write_text("{}")

    def broken(folder):  # given the empty folder being built, as save_pretrained would be
        (folder / "model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_policy(broken, tiny_policy, out, load_config())
    assert (out / "config.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # nothing half-built left beside it


def _write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def test_user_sft_jsonl(small_benchmark, tmp_path):
    root, samples = small_benchmark
    image = str(root / samples[0].image) if not samples[0].image.startswith("/") else samples[0].image
    good = {"image": image, "question": "Q?\nA. Yes.\nB. No.", "options": {"A": "Yes.", "B": "No."}, "answer": "A",
            "target": "<seg>(1, 2)-(1, 3)</seg><think>t</think><answer>A</answer>"}  # fmt: skip
    path = tmp_path / "sft.jsonl"
    _write_jsonl(path, [good, {**good, "target": "<seg></seg><think>t</think><answer>B</answer>", "answer": "B"}])
    examples = read_sft_jsonl(path, grid=8)
    assert [int(e.sample.mask.sum()) for e in examples] == [2, 0]
    assert [e.sample.sample_id for e in examples] == ["sft.jsonl:1", "sft.jsonl:2"]  # file:line without an id
    assert examples[0].sample.anomalous and not examples[1].sample.anomalous
    config = load_config(None, [f"data.sft_jsonl={path}", "mask.grid=8", "data.eval_fraction=0"])
    train, held_out = sft_examples(config)
    assert len(train) == 2 and held_out == []
    assert defect_kinds(train) == []  # no row names its defect: the kind part has nothing to learn ...
    kind = [f"data.sft_jsonl={path}", "mask.grid=8", "model.image_size=224", "data.eval_fraction=0",
            "sft.grounding_kind_weight=1", "sft.max_steps=1", f"sft.output_dir={tmp_path / 'out'}"]  # fmt: skip
    with pytest.raises(ConfigError, match=r"grounding_kind_weight > 0 needs .*sft\.jsonl has none .*'defect' field"):
        run_sft(load_config(None, kind))
    assert not list((tmp_path / "out").glob("checkpoint-*"))
    _write_jsonl(path, [{**good, "defect": "crack"}, {**good, "target": "<seg></seg><think>t</think><answer>B</answer>",
                                                      "answer": "B"}])  # fmt: skip
    assert defect_kinds(read_sft_jsonl(path, grid=8)) == ["crack"]  # ... until one does
    look = [*kind, "sft.grounding_kind_weight=0", "sft.grounding_look_weight=1"]
    with pytest.raises(ConfigError, match=r"grounding_look_weight > 0 needs .*colour and shape .*sft\.jsonl has none"):
        run_sft(load_config(None, look))  # a JSONL row names no colour or shape: the look part cannot learn
    assert not list((tmp_path / "out").glob("checkpoint-*"))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"sft\.jsonl:2: not valid JSON"),
        ('["a list"]', r"sft\.jsonl:2: expected an object"),
        ('{"image": "x.png"}', r"sft\.jsonl:2: missing field\(s\) \['question'"),
        ("BAD_MASK", r"sft\.jsonl:2: mask '\(9, 0\)' does not decode on a 8x8 grid"),
        ("NO_SEG", r"sft\.jsonl:2: no 'mask' field and the target has no single <seg> block"),
        ("NO_IMAGE", r"sft\.jsonl:2: image .*missing\.png does not exist"),
        ("BAD_ANSWER", r"sft\.jsonl:2: .*answer 'E' is not among the options"),
    ],
)
def test_bad_sft_jsonl_names_file_and_line(small_benchmark, tmp_path, line, message):
    _, samples = small_benchmark
    good = {"image": samples[0].image, "question": "Q?", "options": {"A": "Yes.", "B": "No."}, "answer": "A",
            "target": "<seg></seg><think>t</think><answer>A</answer>"}  # fmt: skip
    bad = {
        "BAD_MASK": json.dumps({**good, "mask": "(9, 0)"}),
        "NO_SEG": json.dumps({**good, "target": "<think>t</think><answer>A</answer>"}),
        "NO_IMAGE": json.dumps({**good, "image": "missing.png"}),
        "BAD_ANSWER": json.dumps({**good, "answer": "E"}),
    }.get(line, line)
    path = tmp_path / "sft.jsonl"
    _write_jsonl(path, [good, bad])
    with pytest.raises(DataError, match=message):
        read_sft_jsonl(path, grid=8)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_passthrough_on_cpu(small_benchmark, tmp_path, tiny_dir, stage):
    """The recipe's DeepSpeed configs run (gloo, one process) and the exported policy holds full weights."""
    root, _ = small_benchmark
    config = _config(
        root, tmp_path, "sft.max_steps=2", "sft.eval_samples=0", f"sft.deepspeed=configs/deepspeed/{stage}.json"
    )
    report = run_sft(config)
    final = load_policy(load_config(None, [f"model.path={report['final']}"]).model)
    start = load_policy(load_config(None, [f"model.path={tiny_dir}"]).model)
    pairs = list(zip(final.model.parameters(), start.model.parameters(), strict=True))
    assert all(a.shape == b.shape and a.numel() > 0 for a, b in pairs)  # gathered, not ZeRO-3 partitions
    assert any(not torch.equal(a, b) for a, b in pairs)


def test_a_deepspeed_run_leaves_the_process_as_it_found_it(small_benchmark, tmp_path):
    """Trainer with DeepSpeed sets rank variables and ACCELERATE_USE_DEEPSPEED process-wide; left behind, the
    SFT stage of a later ``rlad train`` from this process (a Ray worker inherits them) started DeepSpeed unasked
    and died looking for MPI."""
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    root, _ = small_benchmark
    env = dict(os.environ)
    run_sft(
        _config(root, tmp_path, "sft.max_steps=1", "sft.eval_samples=0", "sft.deepspeed=configs/deepspeed/zero3.json")
    )
    assert dict(os.environ) == env
    assert not is_deepspeed_zero3_enabled()


def test_missing_deepspeed_config_is_named(small_benchmark, tmp_path):
    root, _ = small_benchmark
    with pytest.raises(ConfigError, match=r"sft.deepspeed: 'nope.json' is not a file"):
        run_sft(_config(root, tmp_path, "sft.deepspeed=nope.json"))


def test_lora_run_resumes_and_exports_merged_weights(small_benchmark, tmp_path):
    """LoRA: checkpoints hold the adapters and the trainable vision tower; a zero-step resume from the last
    one exports the same merged policy as the run that wrote it."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    root, _ = small_benchmark
    lora = ["model.lora.r=4", "sft.eval_samples=0", "sft.max_steps=3", "sft.lr=1e-2"]
    first = run_sft(_config(root, tmp_path / "a", *lora))
    ckpt = last_complete_checkpoint(tmp_path / "a")
    shutil.copytree(ckpt, tmp_path / "b" / ckpt.name)
    second = run_sft(
        _config(root, tmp_path / "b", *lora[:-2], f"sft.max_steps={ckpt.name.split('-')[1]}", "sft.lr=1e-2")
    )
    assert second["train"]["resumed_from"] == str(tmp_path / "b" / ckpt.name)
    a = Qwen2_5_VLForConditionalGeneration.from_pretrained(first["final"]).state_dict()
    b = Qwen2_5_VLForConditionalGeneration.from_pretrained(second["final"]).state_dict()
    assert a.keys() == b.keys() and not any("lora" in k for k in a)  # merged: a plain checkpoint
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_held_out_split_does_not_depend_on_where_the_data_lies(small_benchmark, tmp_path):
    from rlad.data.sources import split

    root, _ = small_benchmark
    moved = tmp_path / "elsewhere" / "bench"
    shutil.copytree(root, moved)
    config = _config(root, tmp_path / "out")
    here = [s.sample_id for s in sft_examples(config)[1]]
    there = [s.sample_id for s in sft_examples(_config(moved, tmp_path / "out"))[1]]
    assert here and here == there
    train, evaluation = split(sft_examples(config)[1], 0.5, root)
    assert {s.image for s in train}.isdisjoint({s.image for s in evaluation})  # by image, never by question


def test_generated_dataset_is_built_once_into_the_cache(tmp_path, monkeypatch):
    from rlad.data.sources import dataset_root

    monkeypatch.setenv("RLAD_CACHE", str(tmp_path))
    config = load_config("configs/demo.yaml", ["data.synth.images_per_class=4", "data.synth.classes=[pill]"])
    root = dataset_root(config)
    assert root.parent == tmp_path and (root / "mmad.json").is_file()
    stamp = (root / "mmad.json").stat().st_mtime_ns
    assert dataset_root(config) == root and (root / "mmad.json").stat().st_mtime_ns == stamp  # reused
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no leftover build folder
    train, held_out = sft_examples(config)  # read from the cached folder: both splits, disjoint by image
    assert train and held_out
    assert {e.sample.image for e in train}.isdisjoint({s.image for s in held_out})
    assert all(Path(s.image).is_file() and root in Path(s.image).parents for s in held_out)


def test_the_grounding_auxiliary_trains_logs_and_leaves_a_plain_checkpoint(small_benchmark, tmp_path):
    """sft.grounding_* (not the paper's recipe): its losses are logged, its head is in the mid-run checkpoints
    (so a resume restores it) but not in the exported policy, which loads as a plain Qwen2.5-VL."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import Qwen2_5_VLForConditionalGeneration

    root, _ = small_benchmark
    grounded = ["sft.grounding_position_weight=1", "sft.grounding_mask_weight=1", "sft.grounding_kind_weight=1",
                "sft.grounding_look_weight=1", "sft.eval_samples=0", "sft.logging_steps=1"]  # fmt: skip
    config = _config(root, tmp_path, "sft.max_steps=2", *grounded)
    examples = sft_examples(config)[0]
    kinds = defect_kinds(examples)
    assert len(kinds) >= 2 and "good" not in kinds
    assert [(name, classes) for name, _, classes in label_parts(config.sft, kinds)] == [
        ("kind", tuple(kinds)), ("colour", DEFECT_COLOURS), ("shape", DEFECT_SHAPES)]  # fmt: skip
    for e in examples:  # a defect's labels are the generator's own; a normal image has none
        meta = e.sample.extra["rlad_meta"]
        looks = [defect_label(e.sample, part) for part in ("colour", "shape")]
        assert looks == ([meta["colour"], meta["shape"]] if e.sample.anomalous else [None, None])
    report = run_sft(config)
    assert report["train"]["steps"] == 2
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    parts = ("row_loss", "col_loss", "mask_loss", "kind_loss", "colour_loss", "shape_loss")
    first = {t: min(e.value for e in events.Scalars(f"train/grounding/{t}")) for t in parts}
    assert first["row_loss"] == pytest.approx(math.log(8), abs=0.5)  # ~uniform at start
    assert first["kind_loss"] == pytest.approx(math.log(len(kinds)), abs=0.5)
    assert first["colour_loss"] == pytest.approx(math.log(len(DEFECT_COLOURS)), abs=0.5)
    assert first["shape_loss"] == pytest.approx(math.log(len(DEFECT_SHAPES)), abs=0.5)
    assert all(math.isfinite(v) for v in first.values())
    with_head = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "checkpoint-2", output_loading_info=True)
    assert any("rlad_grounding_head" in k for k in with_head[1]["unexpected_keys"])
    outputs = 2 * 8 + 1 + len(kinds) + len(DEFECT_COLOURS) + len(DEFECT_SHAPES)
    assert head_state(tmp_path / "checkpoint-2")["rlad_grounding_head.weight"].shape[0] == outputs
    _, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "final", output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]
    resumed = run_sft(_config(root, tmp_path, "sft.max_steps=3", *grounded))
    assert resumed["train"]["resumed_from"].endswith("checkpoint-2") and resumed["train"]["steps"] == 3


def test_a_grounding_layer_the_model_lacks_is_named_before_training(small_benchmark, tmp_path):
    root, _ = small_benchmark
    config = _config(root, tmp_path, "sft.max_steps=1", "sft.grounding_position_weight=1", "sft.grounding_layer=99")
    with pytest.raises(ConfigError, match=r"sft\.grounding_layer 99: .* has 4 language-model layers"):
        run_sft(config)
    assert not list(tmp_path.glob("checkpoint-*"))


def test_a_look_label_the_head_has_no_class_for_is_named_before_training(small_benchmark, tmp_path, monkeypatch):
    """A defect colour outside the head's classes would become "no label" and teach nothing: refused by sample."""
    monkeypatch.setattr("rlad.sft.DEFECT_COLOURS", ("background",))  # a vocabulary most generated defects lack
    root, _ = small_benchmark
    config = _config(root, tmp_path, "sft.max_steps=1", "sft.grounding_look_weight=1")
    with pytest.raises(ConfigError, match=r"\S+\.png#\d+ names the colour '\w+', which is not among the grounding "
                                          r"head's colour classes \['background'\]"):  # fmt: skip
        run_sft(config)
    assert not list(tmp_path.glob("checkpoint-*"))


def test_a_shared_prefix_gives_the_plain_forwards_loss_and_gradients(small_benchmark, tiny_dir):
    """sft.share_prefix: the system prompt run once per batch, every example's remainder behind its cache — the
    plain forward's loss, logits, hidden states and gradients, the <seg>-weighted loss included (1-shot: the
    prefix stops before the reference image)."""
    from rlad.config import ModelConfig
    from rlad.data.questions import sft_target
    from rlad.sft import seg_weighted_loss, shared_prefix_forward, shared_prefix_length

    _, samples = small_benchmark
    policy = load_policy(ModelConfig(path=str(tiny_dir), image_size=224), shots=1, trainable=True)
    builder, model = policy.builder, policy.model
    batch = builder.collate([builder.encode_sft(s, sft_target(s)) for s in samples[:4]])
    start = shared_prefix_length(batch, builder.image_token_id)
    first_image = int((batch["input_ids"][0] == builder.image_token_id).nonzero()[0])
    assert 50 < start == first_image  # the system prompt and the user turn up to its first image token
    seg_ids = tuple(builder.tokenizer.convert_tokens_to_ids(t) for t in ("<seg>", "</seg>"))

    def loss_and_grads(forward):
        out = forward(**batch, output_hidden_states=True)
        weighted = seg_weighted_loss(out, batch["labels"], seg_ids=seg_ids, weight=3.0)
        (out.loss + weighted).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        return out, weighted, grads

    plain, plain_weighted, plain_grads = loss_and_grads(model)
    shared, shared_weighted, shared_grads = loss_and_grads(lambda **b: shared_prefix_forward(model, start, **b))
    assert shared.loss.item() == pytest.approx(plain.loss.item(), rel=1e-5)
    assert shared_weighted.item() == pytest.approx(plain_weighted.item(), rel=1e-5)
    assert torch.allclose(shared.logits, plain.logits[:, start:], atol=1e-5)
    assert torch.allclose(shared.hidden_states[-1], plain.hidden_states[-1][:, start:], atol=1e-5)
    assert shared_grads.keys() == plain_grads.keys()
    for name, g in plain_grads.items():
        assert torch.allclose(shared_grads[name], g, atol=1e-5 + 1e-4 * g.abs().max()), name

    one = {k: v[:1] for k, v in batch.items() if k not in ("pixel_values", "image_grid_thw")}
    assert shared_prefix_length(one, builder.image_token_id) == 0  # nothing to share in one row
    early = dict(batch, labels=batch["labels"].clone())
    early["labels"][:, 20] = 7  # a labelled token ends the shareable prefix
    assert shared_prefix_length(early, builder.image_token_id) == 20


def test_bf16_on_a_cpu_trains_fp32_weights_under_autocast(small_benchmark, tmp_path, tiny_dir):
    """model.dtype=bfloat16 on a CPU: bf16 matmuls under the Trainer's autocast, the weights and AdamW's state
    in fp32. A step of lr 1e-5 moves nearly every weight; updated in bf16 (an ulp of ~1e-4 at these
    magnitudes) nearly all of it would round away."""
    from safetensors.torch import load_file

    root, _ = small_benchmark
    run_sft(_config(root, tmp_path, "sft.max_steps=1", "sft.eval_samples=0", "sft.lr=1e-5", "sft.warmup_ratio=0",
                    "sft.weight_decay=0", "model.dtype=bfloat16"))  # fmt: skip
    before, after = load_file(tiny_dir / "model.safetensors"), load_file(tmp_path / "final" / "model.safetensors")
    name = next(n for n in before if n.endswith("layers.0.mlp.up_proj.weight"))
    assert after[name].dtype == torch.float32
    moved = (after[name] != before[name]).float().mean().item()
    assert moved > 0.9, moved
    step = (after[name] - before[name]).abs().max().item()
    assert 5e-6 < step < 2e-5, step  # Adam's first step: about lr per weight
