"""rlad eval, export and predict: hand-computed metrics, the commands end to end on the tiny model, the
exported folder reloading with plain transformers and answering exactly as its source, and bad input named."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from rewards import RewardMix
from rlad.cli import main
from rlad.config import ConfigError, load_config
from rlad.evaluate import evaluation_metrics, evaluation_report
from rlad.sample import VerifiableSample
from rlad.scoring import ScoredRecord, score_records

DISC = {"A": "Yes.", "B": "No."}


def _sample(tmp_path, name, answer, pixel_box=None):
    """A 16x16 image (grid 4: 4x4-pixel patches), anomalous when ``pixel_box`` (r0, r1, c0, c1) is given."""
    Image.new("RGB", (16, 16)).save(tmp_path / f"{name}.png")
    mask = np.zeros((4, 4), bool)
    extra = {}
    if pixel_box:
        pixels = np.zeros((16, 16), np.uint8)
        r0, r1, c0, c1 = pixel_box
        pixels[r0:r1, c0:c1] = 255
        Image.fromarray(pixels).save(tmp_path / f"{name}_mask.png")
        mask[r0 // 4 : (r1 + 3) // 4, c0 // 4 : (c1 + 3) // 4] = True
        extra = {"mask_paths": [str(tmp_path / f"{name}_mask.png")]}
    defect = "x" if pixel_box else "good"
    return VerifiableSample(name, "Is there any defect?\nA. Yes.\nB. No.", DISC, answer, mask, bool(pixel_box),
                            image=str(tmp_path / f"{name}.png"), class_name=name[0], defect=defect,
                            subtask="Anomaly Discrimination", extra=extra)  # fmt: skip


def test_metrics_by_hand(tmp_path):
    a = _sample(tmp_path, "a", "A", (0, 4, 0, 4))  # 16 anomalous pixels = patch (0, 0)
    b = _sample(tmp_path, "b", "B")
    c = _sample(tmp_path, "c", "B")
    records = [
        ScoredRecord("<seg>(0, 0)-(0, 1)</seg><think>t</think><answer>A</answer>", a, "g"),  # 32 px predicted
        ScoredRecord("<seg></seg><think>t</think><answer>A</answer>", b, "g"),  # wrong letter
        ScoredRecord("<seg>(3, 3)</seg><think>t</think><answer>B</answer>", c, "g"),  # 16 px false alarm
    ]
    scores = score_records(records, RewardMix(load_config().rewards))
    m = evaluation_metrics(records, scores, ("seg", "think", "answer"))
    d = m["detection"]
    # pixels: TP 16, FP 16 + 16, FN 0 over 3 x 256 pixels
    assert d["pixel_f1"] == pytest.approx(32 / 64) and d["pixel_accuracy"] == pytest.approx(736 / 768)
    # images: a TP, b TN, c FP
    assert d["image_f1"] == pytest.approx(2 / 3) and d["image_accuracy"] == pytest.approx(2 / 3)
    assert d["iou_ano"] == pytest.approx(0.5) and d["iou_nor"] == pytest.approx(0.5)
    assert d["patch_f1"] == pytest.approx(2 / (2 + 1 + 2 * 0 + 1))  # patches: TP 1, FP 2, FN 0
    # discrimination: anomalous 1/1, normal 1/2 -> mean 0.75
    assert m["subtasks"] == {"Anomaly Discrimination": 0.75} and m["mmad_mean"] == 0.75
    assert m["format_rate"] == 1.0 and m["answer_unparseable_rate"] == 0.0
    assert m["rewards"]["detection"] == pytest.approx((2 * 2 * 1 / 3 + 1 + 0) / 3)
    per_class = evaluation_report(records, scores, ("seg", "think", "answer"))["per_class"]
    assert set(per_class) == {"a", "b", "c"} and per_class["a"]["detection"]["iou_ano"] == 0.5
    # a layout without <seg> detects nothing: no detection figures, format judged on its own blocks
    no_seg = evaluation_metrics(records, scores, ("think", "answer"))
    assert no_seg["detection"] is None and no_seg["format_rate"] == 0.0


def test_eval_command_writes_json_tables_completions_and_overlays(checkpoint, small_benchmark, tmp_path, capsys):
    root, _ = small_benchmark
    out = tmp_path / "ev"
    main(["eval", str(checkpoint.parent), str(root), "--out", str(out), "--limit", "10", "--overlays", "4"])
    printed = capsys.readouterr().out
    assert "| Class | " in printed and "| Avg. |" in printed and "Pixel-level (F1, Acc)" in printed
    result = json.loads((out / "eval.json").read_text())
    assert result["questions"] == 10 and result["overall"]["n"] == 10 and result["shots"] == 0
    assert set(result["per_class"]) <= {"pill", "wood"} and sum(r["n"] for r in result["per_class"].values()) == 10
    assert {"image_f1", "pixel_f1", "iou_ano", "iou_nor", "unparseable_rate"} <= set(result["overall"]["detection"])
    assert len(list((out / "overlays").glob("*.png"))) == 4
    lines = (out / "completions.jsonl").read_text().splitlines()
    assert len(lines) == 10
    main(["score", str(out / "completions.jsonl")])  # the completions re-score offline
    assert "total" in capsys.readouterr().out


def test_eval_refuses_bad_input_by_name(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["eval", str(checkpoint), str(tmp_path / "no-such-data"), "--out", str(tmp_path / "o")])
    assert "no-such-data does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", str(tmp_path), "held-out"])
    assert f"{tmp_path} is not a checkpoint: no config.json" in capsys.readouterr().err


def _greedy(folder, samples):
    from rlad.config import GenerationConfig, ModelConfig
    from rlad.policy import load_policy
    from rollout.transformers_engine import TransformersEngine

    policy = load_policy(ModelConfig(path=str(folder), image_size=224), shots=0)
    engine = TransformersEngine(policy.model, policy.builder, GenerationConfig(max_new_tokens=12))
    return [c.token_ids for c in engine.generate(samples, n=1, greedy=True)], policy


def test_export_reloads_with_transformers_and_answers_like_its_source(checkpoint, small_benchmark, tmp_path, capsys):
    from transformers import AutoImageProcessor, AutoTokenizer, GenerationConfig, Qwen2_5_VLForConditionalGeneration

    from rlad.inputs import SYSTEM_PROMPT

    out = tmp_path / "served"
    main(["export", str(checkpoint), "--out", str(out)])
    assert "vllm serve" in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "preprocessor_config.json", "chat_template.jinja",
            "generation_config.json", "README.md", "rlad.yaml"} <= names  # fmt: skip
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]  # no pickles
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir() if p.is_file()}
    assert set(modes.values()) == {0o666 & ~umask}, modes  # the weights as readable as the config
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(out, local_files_only=True)
    source = Qwen2_5_VLForConditionalGeneration.from_pretrained(checkpoint, local_files_only=True)
    for (name, a), b in zip(source.state_dict().items(), model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert not {"local_files_only", "is_local"} & set(json.loads((out / "tokenizer_config.json").read_text()))
    AutoImageProcessor.from_pretrained(out, local_files_only=True)
    served = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert SYSTEM_PROMPT in served  # a client that sends no system message gets the trained one
    gen = GenerationConfig.from_pretrained(out)
    assert gen.do_sample is False and gen.max_new_tokens == 12
    assert "## Reward mix" in (out / "README.md").read_text()
    samples = [s for s in small_benchmark[1][:3]]
    ids_source, _ = _greedy(checkpoint, samples)
    ids_export, _ = _greedy(out, samples)
    assert ids_source == ids_export


def test_the_model_cards_transformers_recipe_answers_like_rlad_predict(checkpoint, small_benchmark, tmp_path):
    """The serving journey: export, then the model card's plain-transformers recipe (no rlad, no torchvision) run
    as written in a fresh process, on a square and a non-square image: exactly rlad predict's completion."""
    import re
    import subprocess
    import sys

    from rlad.policy import policy_config
    from rlad.predict import predict

    out = tmp_path / "served"
    main(["export", str(checkpoint), "--out", str(out)])
    card = (out / "README.md").read_text()
    assert re.search(r"^# rlad inspection policy \(\S+ M parameters", card, re.M)  # a title, not the folder name
    for part in ("## Intended use and limitations", "## Prompt format", "## Decoding `<seg>`", "## Reward mix",
                 "| detection | 1.0 | alpha=2.0, found=0.0 |", "| answer | 1.0 | correct=1.0, wrong=0.1 |",
                 "All are built into rlad", "rlad's tiny Qwen2.5-VL-architecture model",
                 "mm_token_type_ids"):  # fmt: skip
        assert part in card, part
    assert "cache" not in card.split("<details>")[0].lower()  # no local cache path named as the base model
    script = tmp_path / "recipe.py"
    script.write_text(re.search(r"\*\*Plain transformers without torchvision\*\*.*?```python\n(.*?)```", card, re.S)[1])
    square = small_benchmark[1][0].image
    wide = tmp_path / "wide.png"
    Image.open(square).crop((0, 40, 224, 184)).save(wide)  # 224x144
    config = policy_config(out, None, [])
    for image in (square, wide):
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
        run = subprocess.run([sys.executable, str(script), str(out), str(image)], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
        want = predict(out, image, config)["completion"]
        assert run.stdout.rstrip("\n") == want, (image, run.stdout, want)


def test_the_card_names_the_tiny_model_as_such_and_a_real_base_by_its_name(tiny_dir, tmp_path):
    from rlad.export import _base_model

    # a run's snapshot names the tiny model by its cache folder: the card must still call it the tiny model
    for path in ("tiny", str(tiny_dir)):
        words, hub_name = _base_model(load_config(None, [f"model.path={path}"]))
        assert words.startswith("rlad's tiny Qwen2.5-VL") and hub_name is None and "base stage" not in words
    based = tmp_path / "tiny-base-0123456789ab"  # the base stage's cache entry (rlad/base_stage.py)
    based.mkdir()
    (based / "rlad_base_stage.json").write_text("{}")
    words, hub_name = _base_model(load_config(None, [f"model.path={based}"]))
    assert words.startswith("rlad's tiny Qwen2.5-VL") and "base stage" in words and hub_name is None
    real = tmp_path / "Qwen2.5-VL-7B-Instruct"
    real.mkdir()
    assert _base_model(load_config(None, [f"model.path={real}"]))[1] == "Qwen2.5-VL-7B-Instruct"


def test_predict_letterboxes_a_non_square_image(tmp_path):
    from rlad.predict import letterbox

    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :, 0] = 100  # border mean (100, 0, 0)
    img[5:15, 10:30] = 255
    Image.fromarray(img).save(tmp_path / "wide.png")
    path, note = letterbox(tmp_path / "wide.png", tmp_path / "square.png")
    assert note.startswith("40x20 letterboxed to 40x40")
    square = np.asarray(Image.open(path))
    assert square.shape == (40, 40, 3)
    assert (square[:10] == (100, 0, 0)).all() and (square[30:] == (100, 0, 0)).all()  # padding above and below
    assert (square[10:30] == img).all()  # the image itself, centred and unscaled
    Image.fromarray(img[:, :20]).save(tmp_path / "sq.png")
    assert letterbox(tmp_path / "sq.png", tmp_path / "unused.png") == (tmp_path / "sq.png", "")


def test_export_merges_a_lora_adapter(checkpoint, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2_5_VLForConditionalGeneration

    from rlad.export import export_policy

    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(checkpoint, local_files_only=True)
    lora = LoraConfig(r=4, target_modules=r".*language_model.*\.(q_proj|v_proj)", init_lora_weights=False)
    adapted = get_peft_model(base, lora)
    adapted.save_pretrained(tmp_path / "adapter")
    want = adapted.merge_and_unload().state_dict()
    out = export_policy(tmp_path / "adapter", tmp_path / "merged")
    got = Qwen2_5_VLForConditionalGeneration.from_pretrained(out, local_files_only=True).state_dict()
    changed = 0
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, msg=name)
        changed += not torch.equal(tensor, Qwen2_5_VLForConditionalGeneration.from_pretrained(
            checkpoint, local_files_only=True).state_dict()[name]) if "q_proj" in name else 0  # fmt: skip
    assert changed  # the adapter did move the weights, and the export carries that
    assert not (out / "adapter_config.json").exists()


def test_export_never_clobbers_and_names_what_is_missing(checkpoint, tmp_path):
    from rlad.export import export_policy

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"taken already exists and is not empty"):
        export_policy(checkpoint, tmp_path / "taken")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match=r"--step needs a run folder"):
        export_policy(checkpoint, tmp_path / "x", step=3)
    with pytest.raises(ConfigError, match=r"holds neither config.json nor a final/ policy"):
        export_policy(tmp_path, tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_predict_prints_answer_and_grid_and_writes_an_overlay(checkpoint, small_benchmark, tmp_path, capsys):
    image = small_benchmark[1][0].image
    main(["predict", str(checkpoint), image, "--out", str(tmp_path / "p.png")])
    out = capsys.readouterr().out
    assert "completion:" in out and "answer:" in out and "anomalous patches (8x8)" in out
    assert (tmp_path / "p.png").is_file()
    reference = small_benchmark[1][0].reference  # a normal image of the same class: the 1-shot prompt
    question = "Where is the defect?\\nA. Top left\\nB. Bottom right\\nC. None"
    main(["predict", str(checkpoint), image, "--reference", reference, "--question", question,
          "--out", str(tmp_path / "q.png")])  # fmt: skip
    assert "answer:" in capsys.readouterr().out and (tmp_path / "q.png").is_file()
    with pytest.raises(SystemExit):
        main(["predict", str(checkpoint), image, "--question", "Which colour? red or white"])
    assert "lists no options" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", str(checkpoint), str(tmp_path / "missing.png")])
    assert "missing.png does not exist" in capsys.readouterr().err


def test_predict_names_a_file_that_is_not_an_image(checkpoint, tmp_path, capsys):
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture")
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(checkpoint), str(notes)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"image {notes} is not an image PIL can read (UnidentifiedImageError" in err and "Traceback" not in err


def test_predict_warns_when_mask_and_answer_disagree():
    from rlad.predict import DEFAULT_QUESTION, contradictions, parse_options

    options = parse_options(DEFAULT_QUESTION)  # A. Yes. / B. No.
    empty, two = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    two[0, :2] = True
    assert contradictions("A", options, two) == [] and contradictions("B", options, empty) == []
    assert contradictions("A", options, empty) == [
        "answer A (Yes.) says there is a defect, but the mask marks no patch"
    ]
    assert contradictions("B", options, two) == ["answer B (No.) says there is no defect, but the mask marks 2 patches"]
    assert contradictions("D", options, two) == ["answer D is not among the question's options (A, B)"]
    assert contradictions(None, options, None) == ["the completion names no answer letter"]
    assert contradictions("A", {"A": "Top left", "B": "None"}, empty) == []  # not a Yes/No question
