"""The tiny model factory, loading checkpoints (Qwen2.5-VL and Qwen2-VL), LoRA, and generation settings."""

import hashlib
import json
import shutil

import pytest
import torch

from rlad.config import ConfigError, LoraConfig, ModelConfig
from rlad.policy import load_policy, resolve_model_path
from rlad.tiny import TAG_TOKENS, TinySpec, build_tiny, tiny_model_dir
from rollout.transformers_engine import TransformersEngine


def test_tiny_model_reloads_with_plain_transformers(tiny_dir):
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    model = AutoModelForImageTextToText.from_pretrained(tiny_dir, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)
    processor = AutoImageProcessor.from_pretrained(tiny_dir, local_files_only=True)
    assert model.config.model_type == "qwen2_5_vl"
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert processor.merge_size == 2 and processor.patch_size == 14
    for tag in TAG_TOKENS:  # one token each, and kept by decode(skip_special_tokens=True)
        ids = tok(tag, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tok.decode(ids, skip_special_tokens=True) == tag
    text = "Ünïcode ✓ <seg>(3, 4)-(3, 5)</seg> and bytes \x00\x7f"  # byte-level: any text round-trips
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.chat_template and "<|image_pad|>" in tok.chat_template


def test_tiny_model_is_cached_and_deterministic(tiny_dir, tmp_path):
    stamp = (tiny_dir / "model.safetensors").stat().st_mtime_ns
    assert tiny_model_dir() == tiny_dir
    assert (tiny_dir / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    again = build_tiny(TinySpec(), tmp_path / "again")

    def digest(folder, name):
        return hashlib.sha256((folder / name).read_bytes()).hexdigest()

    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert digest(again, name) == digest(tiny_dir, name), name


def test_tiny_rotary_layout_is_configurable_and_changes_no_weight(tiny_dir, tmp_path):
    spec = TinySpec(rope_theta=50, mrope_section=(2, 7, 7))
    assert spec.key() == TinySpec(rope_theta=50.0, mrope_section=[2, 7, 7]).key() != TinySpec().key()
    assert TinySpec(rope_theta=10000.0, mrope_section=()).key() == TinySpec().key()  # old caches stay valid
    out = build_tiny(spec, tmp_path / "rope")
    rope = json.loads((out / "config.json").read_text())["text_config"]["rope_parameters"]
    assert rope["rope_theta"] == 50.0 and rope["mrope_section"] == [2, 7, 7]
    # the same seed draws the same weights: a rotary layout is compared against the default on one init
    assert (out / "model.safetensors").read_bytes() == (tiny_dir / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match=r"model.tiny.mrope_section \[2, 7, 8\] must be 3 positive numbers summing to"):
        build_tiny(TinySpec(mrope_section=(2, 7, 8)), tmp_path / "bad")


def test_missing_or_foreign_checkpoints_are_refused_without_download(tmp_path):
    with pytest.raises(ConfigError, match="never downloads"):
        resolve_model_path(ModelConfig(path="Qwen/Qwen2.5-VL-7B-Instruct"))
    with pytest.raises(ConfigError, match=r"no config\.json"):
        resolve_model_path(ModelConfig(path=str(tmp_path)))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConfigError, match="'llama' is not supported"):
        resolve_model_path(ModelConfig(path=str(tmp_path)))
    (tmp_path / "config.json").write_text('{"model_type": ')  # cut short
    with pytest.raises(ConfigError, match=r"config\.json is not valid JSON"):
        resolve_model_path(ModelConfig(path=str(tmp_path)))
    (tmp_path / "config.json").write_text("[256]")
    with pytest.raises(ConfigError, match=r"config\.json holds no model config"):
        resolve_model_path(ModelConfig(path=str(tmp_path)))


def test_qwen2_vl_checkpoints_load_and_run(tiny_dir, tmp_path, small_benchmark):
    """Qwen2-VL: same builder, different vision tower (no window attention, its own merger)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tiny = json.loads((tiny_dir / "config.json").read_text())
    text = tiny["text_config"]
    config = Qwen2VLConfig(
        text_config={k: text[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                          "num_attention_heads", "num_key_value_heads", "rope_parameters",
                                          "eos_token_id", "pad_token_id")},
        vision_config={"depth": 2, "embed_dim": 64, "hidden_size": text["hidden_size"], "num_heads": 4,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        image_token_id=tiny["image_token_id"], video_token_id=tiny["video_token_id"],
        vision_start_token_id=tiny["vision_start_token_id"], vision_end_token_id=tiny["vision_end_token_id"],
    )  # fmt: skip
    Qwen2VLForConditionalGeneration(config).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json"):
        shutil.copy(tiny_dir / name, tmp_path / name)
    policy = load_policy(ModelConfig(path=str(tmp_path), image_size=224))
    assert type(policy.model).__name__ == "Qwen2VLForConditionalGeneration"
    _, samples = small_benchmark
    batch = policy.builder.collate([policy.builder.encode_sft(s, "<seg></seg>") for s in samples[:2]])
    assert torch.isfinite(policy.model(**batch).loss)


def test_no_layer_is_swapped_for_a_kernel_from_the_hub(tiny_dir, monkeypatch):
    """transformers swaps layers for Hub kernels whenever the `kernels` package is installed, again at each
    train()/eval(); on the H100 that fetched code from the network and failed the GPU check. rlad asks for none."""
    from transformers import PreTrainedModel

    asked = []
    original = PreTrainedModel.set_use_kernels

    def spy(self, use_kernels, *args, **kwargs):
        asked.append(use_kernels)
        return original(self, use_kernels, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "set_use_kernels", spy)
    policy = load_policy(ModelConfig(path=str(tiny_dir)), trainable=True)
    policy.model.eval()
    policy.model.train()
    assert asked and not any(asked) and not policy.model.use_kernels


def test_lora_trains_adapters_and_the_vision_tower_only(tiny_dir):
    config = ModelConfig(path=str(tiny_dir), image_size=224, lora=LoraConfig(r=4), gradient_checkpointing=True)
    policy = load_policy(config, trainable=True)
    trainable = {n for n, p in policy.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or ".visual." in n for n in trainable)
    assert any("language_model" in n and "lora_A" in n for n in trainable)
    assert not any("lora_" in n and ".visual." in n for n in trainable)  # adapters stay out of the vision tower
    assert policy.model.base_model.model.is_gradient_checkpointing
    frozen = load_policy(ModelConfig(path=str(tiny_dir), freeze_vision=True), trainable=True)
    assert not any(p.requires_grad for p in frozen.model.model.visual.parameters())


def test_generation_settings_come_from_rlad_config_only(tiny_policy, small_benchmark):
    """A checkpoint whose generation_config says greedy must still sample at rlad's temperature 1.0."""
    from rlad.config import GenerationConfig

    _, samples = small_benchmark
    model = tiny_policy.model
    model.generation_config.do_sample = False
    model.generation_config.temperature = 0.01
    engine = TransformersEngine(model, tiny_policy.builder, GenerationConfig(max_new_tokens=12, temperature=1.0))
    torch.manual_seed(0)
    out = engine.generate(samples[:2], n=4)
    assert [c.sample_id for c in out] == [samples[0].sample_id] * 4 + [samples[1].sample_id] * 4
    assert len({tuple(c.token_ids) for c in out[:4]}) > 1  # sampled, not greedy
    greedy = engine.generate(samples[:2], n=1, greedy=True)
    assert [c.token_ids for c in greedy] == [c.token_ids for c in engine.generate(samples[:2], n=1, greedy=True)]
    for c in out:
        assert len(c.token_ids) <= 12
        assert c.finished == (c.token_ids[-1] == tiny_policy.builder.end_of_turn_id)


def test_static_and_dynamic_kv_cache_generate_the_same_completions(tiny_policy, small_benchmark):
    """``generation.kv_cache`` is a speed setting only: the same tokens (greedy and sampled with one seed) and
    the same log-probs within float noise, whichever cache the engine decodes with."""
    from rlad.config import GenerationConfig

    _, samples = small_benchmark
    runs = {}
    for cache in ("static", "dynamic"):
        engine = TransformersEngine(tiny_policy.model, tiny_policy.builder,
                                    GenerationConfig(max_new_tokens=16, kv_cache=cache))  # fmt: skip
        runs[cache] = engine.generate(samples[:3], n=1, greedy=True) + engine.generate(samples[:3], n=4, seed=5)
    static, dynamic = runs["static"], runs["dynamic"]
    assert [c.token_ids for c in static] == [c.token_ids for c in dynamic]
    for a, b in zip(static, dynamic, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_decoding_a_group_over_one_prompt_copy_generates_what_sdpa_over_every_copy_does(tiny_policy, small_benchmark):
    """On a CPU the engine's decode steps read one copy of a group's prompt (``rlad.attention.SharedPrompt``): the
    same tokens, greedy and sampled with one seed, and the same log-probs within float noise as transformers' sdpa
    over the whole cache, with the static and the dynamic cache."""
    from rlad.attention import NAME, SHARED_PROMPT
    from rlad.config import GenerationConfig

    _, samples = small_benchmark
    model = tiny_policy.model
    assert model.config._attn_implementation == NAME
    seen = []
    hook = model.model.language_model.layers[0].self_attn.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw.get(SHARED_PROMPT)), with_kwargs=True
    )
    runs = {}
    try:
        for attention in (NAME, "sdpa"):
            model.set_attn_implementation(attention)
            for cache in ("static", "dynamic"):
                engine = TransformersEngine(model, tiny_policy.builder, GenerationConfig(max_new_tokens=16,
                                            kv_cache=cache))  # fmt: skip
                runs[attention, cache] = engine.generate(samples[:3], n=4, seed=5) + engine.generate(
                    samples[:2], n=3, greedy=True
                )
    finally:
        model.set_attn_implementation(NAME)
        hook.remove()
    shared = [s for s in seen if s is not None]
    assert shared and {s.group for s in shared} == {4, 3} and all(s.filled > s.prompt for s in shared)
    for cache in ("static", "dynamic"):
        ours, theirs = runs[NAME, cache], runs["sdpa", cache]
        assert [c.token_ids for c in ours] == [c.token_ids for c in theirs]
        for a, b in zip(ours, theirs, strict=True):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_chat_template_kept_with_the_processor_is_used(tiny_dir, tmp_path, small_benchmark):
    """Released Qwen-VL folders may keep the vision-aware template in chat_template.json, not the tokenizer."""
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, folder)
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").unlink()
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    policy = load_policy(ModelConfig(path=str(folder), image_size=224))
    reference = load_policy(ModelConfig(path=str(tiny_dir), image_size=224))
    _, samples = small_benchmark
    assert policy.builder.prompt_text(samples[0]) == reference.builder.prompt_text(samples[0])


def test_engine_logprobs_match_the_learner_for_the_same_weights(tiny_policy, small_benchmark):
    """What the rollout engine reports for its sampled tokens is what the learner computes, teacher-forced,
    on the same weights: the input builder and the positions agree between generation and training."""
    from rlad.config import GenerationConfig
    from rlad.logprobs import token_logprobs

    _, samples = small_benchmark
    engine = TransformersEngine(tiny_policy.model, tiny_policy.builder, GenerationConfig(max_new_tokens=10,
                                temperature=0.7), version=3)  # fmt: skip
    torch.manual_seed(1)
    completions = engine.generate(samples[:2], n=2)
    assert all(c.policy_version == 3 and len(c.logprobs) == len(c.token_ids) for c in completions)
    encoded = [tiny_policy.builder.encode_completion(samples[i // 2], c.token_ids) for i, c in enumerate(completions)]
    batch = tiny_policy.builder.collate(encoded)
    with torch.no_grad():
        learner, mask = token_logprobs(tiny_policy.model, batch, temperature=0.7)
    for row, c in enumerate(completions):
        got = learner[row][mask[row]]
        assert torch.allclose(got, torch.tensor(c.logprobs), atol=1e-4), (got, c.logprobs)
    # left padding (the learner's): only the completions' logits are computed, same numbers
    left = tiny_policy.builder.collate(encoded, padding_side="left")
    calls = []
    hook = tiny_policy.model.lm_head.register_forward_hook(lambda m, i, o: calls.append(o.shape[1]))
    with torch.no_grad():
        kept, kept_mask = token_logprobs(tiny_policy.model, left, temperature=0.7)
    hook.remove()
    assert calls == [max(len(c.token_ids) for c in completions) + 1] and calls[0] < left["input_ids"].shape[1] // 4
    for row, c in enumerate(completions):
        assert torch.allclose(kept[row][kept_mask[row]], torch.tensor(c.logprobs), atol=1e-4)


def test_vision_tokens_are_never_sampled(tiny_policy, small_benchmark):
    """Even a policy that wants nothing but <|image_pad|> never emits it: the learner would look for an image
    that is not there."""
    from rlad.config import GenerationConfig

    _, samples = small_benchmark
    tok = tiny_policy.tokenizer
    pad = tok.convert_tokens_to_ids("<|image_pad|>")

    def prefer_image_pad(module, inputs, output):
        output[..., pad] += 1e4
        return output

    handle = tiny_policy.model.lm_head.register_forward_hook(prefer_image_pad)
    try:
        engine = TransformersEngine(tiny_policy.model, tiny_policy.builder, GenerationConfig(max_new_tokens=6))
        completions = engine.generate(samples[:2], n=3, seed=0)
    finally:
        handle.remove()
    assert all(pad not in c.token_ids for c in completions)
    assert all(len(c.token_ids) == len(c.logprobs) > 0 for c in completions)


def test_merged_lora_weights_equal_peft_merge(tiny_dir):
    """``merge_lora_state`` (what a LoRA learner sends to the engines and what export writes) gives the weights
    of peft's own merge_and_unload, under the plain model's names."""
    import copy

    from rlad.config import ModelConfig
    from rlad.policy import load_policy, merge_lora_state

    config = ModelConfig(path=str(tiny_dir), image_size=224)
    config.lora.r, config.lora.alpha = 4, 8
    model = load_policy(config, shots=0, trainable=True).model
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(0.1 * torch.randn_like(p))  # B starts at zero: give the adapters something to merge
    merged = merge_lora_state(model.state_dict(), config.lora.alpha / config.lora.r)
    reference = copy.deepcopy(model).merge_and_unload().state_dict()
    assert set(merged) == set(reference)
    for name, tensor in reference.items():
        torch.testing.assert_close(merged[name], tensor, msg=name)


def test_bf16_on_a_cpu_without_bf16_units_is_obeyed_with_a_warning(monkeypatch, caplog):
    import rlad.policy as policy

    monkeypatch.setattr(policy, "cpu_bf16_units", lambda: None)
    with caplog.at_level("WARNING", logger="rlad.policy"):
        assert policy.torch_dtype(ModelConfig(dtype="bfloat16"), "cpu") == torch.bfloat16
        assert policy.torch_dtype(ModelConfig(dtype="auto"), "cpu") == torch.float32
    assert [r.getMessage() for r in caplog.records if "without bf16 units" in r.getMessage()] != []
    assert len(caplog.records) == 1  # auto says nothing: it chose fp32

    caplog.clear()
    monkeypatch.setattr(policy, "cpu_bf16_units", lambda: "avx512_bf16")
    with caplog.at_level("WARNING", logger="rlad.policy"):
        assert policy.torch_dtype(ModelConfig(dtype="bfloat16"), "cpu") == torch.bfloat16
    assert caplog.records == []


def test_auto_is_bf16_on_a_cpu_only_with_amx_and_a_wide_enough_model(monkeypatch, tmp_path):
    """Where it was measured to pay (rlad.policy.BF16_CPU_MIN_WIDTH): AMX and a language model or a vision tower
    >= 256 wide."""
    import rlad.policy as policy

    def checkpoint(name, text, vision=None):
        folder = tmp_path / name
        folder.mkdir()
        config = {"text_config": {"hidden_size": text}}
        if vision is not None:
            config["vision_config"] = {"hidden_size": vision, "out_hidden_size": text}
        (folder / "config.json").write_text(json.dumps(config))
        return folder

    auto, w = ModelConfig(dtype="auto"), policy.BF16_CPU_MIN_WIDTH
    narrow, wide = checkpoint("narrow", 128, 128), checkpoint("wide", w)
    wide_tower = checkpoint("tower", 128, w)  # the demo's: a tower of 256 on a language model of 128
    monkeypatch.setattr(policy, "cpu_bf16_units", lambda: "amx_bf16")
    assert policy.torch_dtype(auto, "cpu", wide) == torch.bfloat16
    assert policy.torch_dtype(auto, "cpu", wide_tower) == torch.bfloat16
    assert policy.torch_dtype(auto, "cpu", narrow) == torch.float32
    assert policy.torch_dtype(auto, "cpu", tmp_path / "missing") == torch.float32
    not_a_config = tmp_path / "list"
    not_a_config.mkdir()
    (not_a_config / "config.json").write_text("[256]")
    assert policy.torch_dtype(auto, "cpu", not_a_config) == torch.float32
    assert policy.torch_dtype(ModelConfig(dtype="float32"), "cpu", wide) == torch.float32
    for units in ("avx512_bf16", None):
        monkeypatch.setattr(policy, "cpu_bf16_units", lambda units=units: units)
        assert policy.torch_dtype(auto, "cpu", wide) == torch.float32
        assert policy.torch_dtype(auto, "cpu", wide_tower) == torch.float32


def test_patch_embedding_runs_as_a_matmul_with_the_convolutions_values_and_weight(tiny_dir):
    from rlad.policy import PatchProjection, patch_embedding_as_matmul

    torch.manual_seed(0)
    conv = torch.nn.Conv3d(3, 16, kernel_size=(2, 14, 14), stride=(2, 14, 14), bias=True)
    state = {k: v.clone() for k, v in conv.state_dict().items()}
    patches = torch.randn(40, 3, 2, 14, 14, requires_grad=True)  # one patch per row, as Qwen-VL feeds it
    upstream = torch.randn(40, 16, 1, 1, 1)

    def values_and_grads(forward):
        out = forward(patches)
        (out * upstream).sum().backward(inputs=[conv.weight, conv.bias, patches])
        grads = [t.grad for t in (conv.weight, conv.bias, patches)]
        conv.weight.grad = conv.bias.grad = patches.grad = None
        return [out.detach(), *grads]

    want = values_and_grads(lambda x: torch.nn.functional.conv3d(x, conv.weight, conv.bias, stride=conv.stride))
    assert patch_embedding_as_matmul(torch.nn.Sequential(conv)) == 1 and type(conv) is PatchProjection
    got = values_and_grads(conv)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4)
    assert conv.state_dict().keys() == state.keys() and all(torch.equal(conv.state_dict()[k], state[k]) for k in state)

    image = torch.randn(1, 3, 2, 28, 28)  # any other input shape still convolves
    assert torch.allclose(conv(image), torch.nn.functional.conv3d(image, conv.weight, conv.bias, stride=conv.stride))
    overlapping = torch.nn.Conv3d(3, 4, kernel_size=3, stride=1)  # a real convolution is left alone
    assert patch_embedding_as_matmul(torch.nn.Sequential(overlapping)) == 0 and type(overlapping) is torch.nn.Conv3d

    proj = load_policy(ModelConfig(path=str(tiny_dir))).model.model.visual.patch_embed.proj
    assert type(proj) is PatchProjection  # every loaded policy
    assert proj.weight.dim() == 5  # the checkpoint's layout: saving and the weight sync see no difference


def test_the_policy_runs_it_on_a_cpu_and_logits_match_sdpa():
    """rlad/attention.py's function is what a CPU policy attends with; in bf16 (where it takes its own path) a
    prefill and a cached decode step through it give transformers' sdpa logits to bf16 rounding."""
    model = load_policy(ModelConfig(path="tiny", dtype="bfloat16")).model
    assert model.config.text_config._attn_implementation == "rlad_cpu"
    ids = torch.randint(10, 400, (3, 12))
    attention_mask = torch.ones_like(ids)
    attention_mask[0, :4] = 0
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=attention_mask, use_cache=True)
        step = dict(input_ids=ids[:, :1], attention_mask=torch.cat([attention_mask, attention_mask[:, :1]], 1))
        ours = model(**step, past_key_values=out.past_key_values).logits
        model.set_attn_implementation("sdpa")
        out = model(input_ids=ids, attention_mask=attention_mask, use_cache=True)
        theirs = model(**step, past_key_values=out.past_key_values).logits
    assert ours.dtype == torch.bfloat16
    scale = theirs.float().abs().max()
    assert (ours.float() - theirs.float()).abs().max() <= 0.02 * scale


def test_the_attention_is_the_configured_one_and_flash_is_refused_where_it_cannot_run(tiny_dir):
    from rlad.attention import NAME as CPU_ATTENTION

    auto = load_policy(ModelConfig(path=str(tiny_dir)))
    assert auto.model.config._attn_implementation == CPU_ATTENTION  # auto on a CPU: rlad.attention's
    for choice in ("eager", "sdpa"):
        policy = load_policy(ModelConfig(path=str(tiny_dir), attn_implementation=choice))
        assert policy.model.config._attn_implementation == choice
        assert policy.model.config.vision_config._attn_implementation == choice
    with pytest.raises(ConfigError, match=r"model\.attn_implementation flash_attention_2 needs a CUDA GPU; .* cpu"):
        load_policy(ModelConfig(path=str(tiny_dir), attn_implementation="flash_attention_2"))
