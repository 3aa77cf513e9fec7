"""The rlad command line: config, rewards, score (with bad input files), and the demo."""

import json
import re

import pytest
from conftest import make_sample

from rlad.cli import main


def write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def record(completion, sample, group="g"):
    return json.dumps({"completion": completion, "sample": sample.to_record(), "group": group})


def test_config_prints_resolved_yaml(capsys):
    main(["config", "configs/demo.yaml", "mask.grid=6", "model.image_size=168"])  # one image token per cell
    out = capsys.readouterr().out
    assert "grid: 6" in out and "alpha: 2.0" in out


def test_rewards_lists_builtins(capsys):
    main(["rewards"])
    out = capsys.readouterr().out
    assert "detection" in out and "alpha=2.0" in out and "wrong=0.1" in out


def test_score_writes_per_completion_scores(tmp_path, capsys):
    s = make_sample([(0, 0)], answer="A")
    good = "<seg>(0, 0)</seg><think>x</think><answer>A</answer>"
    f = write_jsonl(tmp_path / "c.jsonl", [record(good, s, "good"), record("junk", s, "bad")])
    main(["score", str(f), "--out", str(tmp_path / "s.jsonl"), "rewards.format.weight=2"])
    scores = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    # good: format 1 (x2) + detection 2 (alpha 2, F1 1) + answer 1 = 5
    assert scores[0]["total"] == 5.0 and scores[1]["total"] == 0.0
    assert "good" in capsys.readouterr().out


@pytest.mark.parametrize(
    "line, says",
    [
        ("{not json", "c.jsonl:2: not valid JSON"),
        ("[1, 2]", "c.jsonl:2: expected an object"),
        ('{"sample": {}}', "c.jsonl:2: missing field 'completion'"),
        ('{"completion": 5, "sample": {}}', "c.jsonl:2: field 'completion' must be a string"),
        ('{"completion": "x", "sample": {"grid": 4}}', "c.jsonl:2: field 'sample' is not a valid sample"),
    ],
)
def test_score_names_the_bad_line(tmp_path, capsys, line, says):
    ok = record("x", make_sample())
    f = write_jsonl(tmp_path / "c.jsonl", [ok, line])
    with pytest.raises(SystemExit) as exit_info:
        main(["score", str(f)])
    assert exit_info.value.code == 2
    assert says in capsys.readouterr().err


def test_score_bad_mask_in_sample_names_the_line(tmp_path, capsys):
    rec = make_sample().to_record() | {"mask": "(9, 9)"}
    f = write_jsonl(tmp_path / "c.jsonl", [json.dumps({"completion": "x", "sample": rec})])
    with pytest.raises(SystemExit):
        main(["score", str(f)])
    assert "c.jsonl:1: field 'sample' is not a valid sample: patch '(9, 9)' lies outside the 4x4 grid" in (
        capsys.readouterr().err
    )


def test_score_missing_file_and_bad_config(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["score", str(tmp_path / "none.jsonl")])
    assert "none.jsonl" in capsys.readouterr().err
    f = write_jsonl(tmp_path / "c.jsonl", [record("x", make_sample())])
    with pytest.raises(SystemExit):
        main(["score", str(f), "rewards.nope.weight=1"])
    assert "unknown reward 'nope'" in capsys.readouterr().err


def test_demo_runs_and_its_checks_hold(tmp_path, capsys):
    main(["demo", "--out", str(tmp_path / "demo"), "--config", "configs/demo.yaml", "--no-train"])  # seconds
    out = capsys.readouterr().out
    assert out.count("ok  ") == 3 and "FAIL" not in out
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["1 sft-target"]["patch_F1"] == 1.0 and summary["6 junk"]["total"] == 0.0
    assert (tmp_path / "demo" / "contact_sheet.png").is_file()
    assert (tmp_path / "demo" / "data" / "mmad.json").is_file()


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("model.path=/no/such/checkpoint", r"model.path '/no/such/checkpoint' is not a local directory"),
        ("data.root=/no/such/data", r"data.root '/no/such/data' is not a directory"),
        ("data.sft_jsonl=/no/such.jsonl", r"SFT file /no/such.jsonl does not exist"),
    ],
)
def test_sft_bad_paths_exit_with_the_path_named(capsys, tmp_path, override, says):
    with pytest.raises(SystemExit) as exit_info:
        main(["sft", "configs/demo.yaml", override, f"sft.output_dir={tmp_path / 'out'}"])
    assert not (tmp_path / "out").exists()  # nothing written for a run that cannot start
    assert exit_info.value.code == 2
    assert re.search(says, capsys.readouterr().err)


NO_GROUNDING = ["sft.grounding_position_weight=0", "sft.grounding_mask_weight=0", "sft.grounding_kind_weight=0"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["resume=/no/such/run"], r"resume=/no/such/run: not a run folder \(no /no/such/run/config.yaml\)"),
        (["configs/demo.yaml", "train.warm_start=/no/such/ckpt"], r"train.warm_start '/no/such/ckpt' is not a checkp"),
        (["configs/demo.yaml", "model.path=/no/such/checkpoint"], r"model.path '/no/such/checkpoint' is not a local"),
        (["configs/demo.yaml", "grpo.group_size=1"], r"group_size >= 2"),
        (["configs/demo.yaml", "learner.deepspeed=/no/ds.json"], r"learner.deepspeed: '/no/ds.json' is not a file"),
        # named before minutes of the tiny model's base stage, not after
        (["configs/demo.yaml", "model.base.images=100", "learner.deepspeed=/no/ds.json"], r"learner.deepspeed: '/no"),
        (  # the demo's grounding loss does not run under DeepSpeed: off, so the path is what is wrong
            ["configs/demo.yaml", "sft.deepspeed=/no/ds.json", *NO_GROUNDING],
            r"sft.deepspeed: '/no/ds.json' is not a file",
        ),
        (
            ["configs/demo.yaml", "model.lora.r=4", "learner.zero_stage=3"],
            r"model\.lora\.r > 0 with learner\.zero_stage 3",
        ),
    ],
)
def test_train_bad_input_exits_before_ray_starts(capsys, tmp_path, args, says):
    import ray

    with pytest.raises(SystemExit) as exit_info:
        main(["train", *args, f"train.run_dir={tmp_path / 'run'}"])
    assert exit_info.value.code == 2 and re.search(says, capsys.readouterr().err)
    assert not (tmp_path / "run").exists() and not ray.is_initialized()
