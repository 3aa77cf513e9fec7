"""The user's journeys, typed as a user types them: ``rlad`` in a fresh process, on files a user would have.

Serving an export and adding a reward have their own files (``tests/component/test_eval_export.py``: the model
card's transformers recipe run as written; ``tests/component/test_reward_recipe.py``: the README's reward recipe
and a broken plugin), TensorBoard is read back in ``tests/integration/test_train.py``. Here: ablating a mix with
``rlad rescore``, predicting on awkward images, an MMAD-layout dataset through ``rlad eval``, and the CLI's
small promises (``rlad config KEY=VAL``, help with defaults and examples, ``--limit``).
"""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rlad.config import load_config, save_config

PLUGIN = '''
def think_length_bonus(completion, sample, *, target: int = 20):
    """1 when the <think> text is at least ``target`` characters long."""
    think = completion.split("<think>")[-1].split("</think>")[0] if "<think>" in completion else ""
    return 1.0 if len(think) >= target else 0.0


def region_word(completion, sample, *, word: str = "region"):
    """1 when the reasoning names a region with ``word``."""
    return 1.0 if word in completion else 0.0
'''


def rlad(*args: str, cwd: Path, extra_path: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "RLAD_VERBOSE": "0"}
    if extra_path is not None:
        env["PYTHONPATH"] = f"{extra_path}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return subprocess.run([sys.executable, "-m", "rlad.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def _plugin(folder: Path) -> Path:
    """An installed reward plugin, as pip leaves one: a module and its dist-info with ``rlad.rewards`` entry points."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "my_rewards.py").write_text(PLUGIN)
    dist = folder / "my_rewards-1.0.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-rewards\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[rlad.rewards]\nthink_length_bonus = my_rewards:think_length_bonus\nregion_word = my_rewards:region_word\n"
    )
    return folder


def test_rescore_a_run_trained_with_plugin_rewards_under_its_own_mix_and_others(small_benchmark, tmp_path):
    """A run trained with two plugin rewards: ``rlad rescore RUN`` uses the run's own mix (not the schema's), shows
    every reward as its own column, compares mixes side by side and writes the per-completion table."""
    from rewards import RewardMix, reward
    from rlad.grpo import group_advantages
    from rlad.replay import Group, ReplayStore

    plugin = _plugin(tmp_path / "site")
    sys.path.insert(0, str(plugin))
    try:
        import my_rewards
    finally:
        sys.path.remove(str(plugin))
    reward("think_length_bonus")(my_rewards.think_length_bonus)  # in this process only (restored by conftest)
    reward("region_word")(my_rewards.region_word)
    run = tmp_path / "run"
    config = load_config(None, ["rewards.think_length_bonus.weight=0.5", "rewards.region_word.weight=0.25",
                                "grpo.group_size=4", "grpo.advantage_scale=none"])  # fmt: skip
    run.mkdir()
    save_config(config, run / "config.yaml")
    mix = RewardMix(config.rewards)
    _, samples = small_benchmark
    texts = ["<seg></seg><think>the region looks clean and even</think><answer>B</answer>",
             "<seg>(1, 1)</seg><think>short</think><answer>A</answer>",
             "<seg>(1, 1)-(1, 2)</seg><think>a dark region in the upper left</think><answer>A</answer>",
             "junk"]  # fmt: skip
    groups = []
    for step in range(3):
        sample = samples[step]
        scores = mix.score(texts, [sample] * 4)
        groups.append(Group(
            group_id=f"{step:06d}-0000", step=step, policy_version=step, sample=sample, completions=texts,
            token_ids=[[1]] * 4, logprobs=[[-1.0]] * 4, rewards={k: v.tolist() for k, v in scores.components.items()},
            totals=scores.total.tolist(), advantages=group_advantages(torch.tensor(scores.total), 4, "none").tolist(),
        ))  # fmt: skip
    ReplayStore(run / "replay").append(groups)
    trained_total = float(np.mean([t for g in groups for t in g.totals]))

    mixes = ["--mix", "no-answer: rewards.answer.weight=0", "--mix", "configs/demo.yaml"]
    done = rlad("rescore", str(run), *mixes, "--out", str(tmp_path / "table.csv"), cwd=Path.cwd(), extra_path=plugin)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    lines = out.splitlines()
    side = lines[next(i for i, line in enumerate(lines) if line.startswith("the mixes side by side")) + 1 :]
    header = side[0].split()
    assert header[:2] == ["mix", "total"] and {"think_length_bonus", "region_word", "no_signal_groups", "sign_flips",
                                               "rank_corr"} <= set(header)  # fmt: skip
    rows = {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line.strip()) for line in side[1:5])}
    col = header.index("total") - 1
    assert float(rows["stored"][col]) == pytest.approx(trained_total, abs=1e-3)
    assert float(rows["run's mix"][col]) == pytest.approx(trained_total, abs=1e-3)  # its own mix, not the schema's
    assert rows["run's mix"][header.index("rank_corr") - 1] == "1.000"
    assert float(rows["no-answer"][col]) < trained_total
    assert rows["demo"][header.index("think_length_bonus") - 1] == "—"  # a mix without that reward, named by its file
    with (tmp_path / "table.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 12 and float(table[0]["stored/total"]) == pytest.approx(groups[0].totals[0])
    assert "no-answer/advantage" in table[0] and "run's mix/think_length_bonus" in table[0]


def test_serve_an_export_as_its_model_card_says(checkpoint, small_benchmark, tmp_path):
    """``rlad export``, then the card's plain-transformers recipe copied into a file and run, then ``rlad predict``
    on the export: the same completion, and files as readable as each other."""
    served = tmp_path / "served"
    done = rlad("export", str(checkpoint), "--out", str(served), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert {oct(p.stat().st_mode & 0o044) for p in served.iterdir()} == {oct(0o044)}  # group/world readable
    card = (served / "README.md").read_text()
    (tmp_path / "serve.py").write_text(re.search(r"without torchvision\*\*.*?```python\n(.*?)```", card, re.S)[1])
    image = small_benchmark[1][1].image
    recipe = subprocess.run([sys.executable, "serve.py", str(served), image], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert recipe.returncode == 0, recipe.stderr[-2000:]
    predicted = rlad("predict", str(served), image, "--out", str(tmp_path / "p.png"), cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    completion = predicted.stdout.split("completion: ", 1)[1].split("\n\nanswer: ", 1)[0]
    assert recipe.stdout.rstrip("\n") == completion


def test_predict_on_a_wide_image_and_on_a_file_that_is_not_one(checkpoint, small_benchmark, tmp_path):
    wide = tmp_path / "wide.png"
    Image.open(small_benchmark[1][0].image).crop((0, 40, 224, 184)).save(wide)
    done = rlad("predict", str(checkpoint), str(wide), "--out", str(tmp_path / "p.png"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "note: image " in done.stdout and "224x144 letterboxed to 224x224" in done.stdout
    assert "anomalous patches (8x8)" in done.stdout and (tmp_path / "p.png").is_file()
    assert Image.open(tmp_path / "p.png").size[1] >= 384
    notes = tmp_path / "notes.png"
    notes.write_text("meeting notes, not a picture")
    bad = rlad("predict", str(checkpoint), str(notes), cwd=tmp_path)
    assert bad.returncode == 2 and "is not an image PIL can read" in bad.stderr and "Traceback" not in bad.stderr


def test_eval_on_a_dataset_in_mmads_own_layout(checkpoint, small_benchmark, tmp_path):
    """MMAD's tree: mask paths climbing with .. from the image folder, object questions typed Object Structure /
    Details; ``rlad eval`` reads it and reports one Object Analysis column, as MMAD's scorer does."""
    src, _ = small_benchmark
    root = tmp_path / "MMAD"
    entries = {}
    for defect, answer in (("crack", "A"), ("good", "B")):
        image = root / "MVTec-AD/pill/test" / defect / "000.png"
        image.parent.mkdir(parents=True)
        shutil.copy(src / "pill/test" / defect / "000.png", image)
        entry = {"conversation": [
            {"Question": "Is there any defect in the object?", "Options": {"A": "Yes.", "B": "No."},
             "Answer": answer, "type": "Anomaly Detection"},
            {"Question": "What is it?", "Options": {"A": "A pill.", "B": "A screw."}, "Answer": "A",
             "type": "Object Structure"},
            {"Question": "What colour?", "Options": {"A": "White.", "B": "Green."}, "Answer": "A",
             "type": "Object Details"},
        ]}  # fmt: skip
        if defect != "good":
            mask = root / "MVTec-AD/pill/ground_truth" / defect / "000_mask.png"
            mask.parent.mkdir(parents=True)
            shutil.copy(src / "pill/ground_truth" / defect / "000_mask.png", mask)
            entry["mask_path"] = f"../ground_truth/{defect}/000_mask.png"
        entries[f"MVTec-AD/pill/test/{defect}/000.png"] = entry
    (root / "mmad.json").write_text(json.dumps(entries))
    done = rlad("eval", str(checkpoint), str(root / "mmad.json"), "--out", str(tmp_path / "ev"), "--overlays", "0",
                cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert result["questions"] == 6
    assert set(result["overall"]["subtasks"]) == {"Anomaly Discrimination", "Object Analysis"}
    assert "Obj Ana." in done.stdout and "Anom Dis." in done.stdout


def test_the_cli_keeps_its_small_promises(checkpoint, tmp_path):
    done = rlad("config", "grpo.steps=3", cwd=tmp_path)  # no file: the schema's defaults and the override
    assert done.returncode == 0, done.stderr
    assert re.search(r"^grpo:\n  steps: 3$", done.stdout, re.M)
    score = rlad("score", "--help", cwd=tmp_path)
    assert "[key=value ...]" in score.stdout and "example:\n  rlad score " in score.stdout
    for command in ("eval", "rescore", "predict", "export", "train", "sft", "demo", "config"):
        text = rlad(command, "--help", cwd=tmp_path).stdout
        assert "example:\n  rlad " in text, command
    assert "PNG overlays written, half hits, half misses (default: 12)" in " ".join(
        rlad("eval", "--help", cwd=tmp_path).stdout.split()
    )
    zero = rlad("eval", str(checkpoint), "held-out", "--limit", "0", cwd=tmp_path)
    assert zero.returncode == 2 and "--limit: must be a positive number" in zero.stderr
