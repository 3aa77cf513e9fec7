"""experiments/learning/seeds.py's table: intervals over seeds and paired GRPO − SFT differences, by hand."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "learning"))
from seeds import COLUMNS, per_seed, reward_rise, sweep_table


def _row(total, patch_f1, n=128):
    return {"n": n, **dict.fromkeys(COLUMNS, 0.5), "total": total, "patch_F1": patch_f1}


def test_sweep_table_pairs_by_seed():
    # warm start totals 2.0, 2.2, 1.8; GRPO +0.10, +0.12, +0.08 on the same seeds: mean 0.10, sd 0.02,
    # half-width 4.303 * 0.02 / sqrt(3) = 0.050 -> excludes 0 (marked *), though the rows' own intervals overlap
    reports = {s: {"rows": {"warm_start": _row(w, 0.1), "grpo": _row(w + d, 0.1)}}
               for s, w, d in ((0, 2.0, 0.10), (1, 2.2, 0.12), (2, 1.8, 0.08))}  # fmt: skip
    text = sweep_table(reports, {0: (0.3, 0.1), 1: (0.2, 0.1), 2: (0.1, 0.1)})
    lines = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in text.splitlines()
             if line.startswith("| ")}  # fmt: skip
    assert lines["warm_start"][:2] == ["128", "2.000 ± 0.497"]  # sd 0.2 -> 4.303 * 0.2 / sqrt(3)
    assert lines["grpo − warm_start"][:2] == ["paired", "0.100 ± 0.050 *"]
    assert lines["grpo − warm_start"][1 + COLUMNS.index("patch_F1")] == "0.000 ± 0.000"  # no change, no star
    assert "last fifth of GRPO steps − first fifth: 0.200 ± 0.248 (seed 0: +0.300" in text


def test_reward_rise_compares_the_last_fifth_with_the_first():
    metrics = [{"reward/total": v} for v in (1.0, 1.2, 1.1, 1.3, 1.4, 1.5, 1.6, 1.7, 2.0, 2.2)]
    rise, spread = reward_rise(metrics)
    assert rise == pytest.approx(2.1 - 1.1) and spread == pytest.approx(0.1414, abs=1e-4)


def test_sft_levers_reads_a_lever_and_pairs_it_by_seed():
    from seeds import paired_cells
    from sft_levers import parse_lever

    assert parse_lever("grounded=sft.grounding_mask_weight=0.1 sft.lr=2e-3") == (
        "grounded",
        ["sft.grounding_mask_weight=0.1", "sft.lr=2e-3"],
    )
    for bad in ("grounded", "grounded=", "=a=b", "grounded=novalue"):
        with pytest.raises(SystemExit, match="NAME=key=value"):
            parse_lever(bad)
    # patch F1 +0.05, +0.06, +0.07 over the baseline: mean 0.06, sd 0.01, half-width 4.303 * 0.01 / sqrt(3)
    # = 0.025 -> excludes 0; answer accuracy +0.02, +0.04, +0.06: half-width 0.050 > 0.04 -> does not
    base = [_row(2.0, 0.10), _row(2.0, 0.10), _row(2.0, 0.10)]
    lever = [_row(2.0, 0.15), _row(2.0, 0.16), _row(2.0, 0.17)]
    for row, gain in zip(lever, (0.02, 0.04, 0.06), strict=True):
        row["answer_acc"] += gain
    cells = dict(zip(COLUMNS, paired_cells(lever, base), strict=True))
    assert cells["patch_F1"] == "0.060 ± 0.025 *"
    assert cells["answer_acc"] == "0.040 ± 0.050"
    assert cells["total"] == "0.000 ± 0.000"  # no difference at all is not "beyond noise"


def test_seed_placeholder_gives_each_seed_its_own_override():
    overrides = ["train.warm_start=runs/sft-levers/x/seed-{seed}", "grpo.steps=80"]
    assert per_seed(overrides, 2) == ["train.warm_start=runs/sft-levers/x/seed-2", "grpo.steps=80"]


def test_rescoring_a_file_names_it_when_it_is_empty(tmp_path):
    from seeds import rescored_row

    empty = tmp_path / "eval_after.jsonl"
    empty.write_text("")
    with pytest.raises(SystemExit, match=r"eval_after.jsonl holds no completions"):
        rescored_row(empty, tmp_path / "rlad.yaml")


def test_rows_can_be_scored_under_another_mix_than_the_run_trained_with(tmp_path):
    import json

    from seeds import run_rows

    from rlad.config import load_config, save_config

    root = Path(__file__).resolve().parents[2]
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "report.json").write_text(json.dumps({"rows": {"grpo": {}}}))
    save_config(load_config(root / "configs/demo.yaml", ["rewards.detection.found=2"]), run / "config.yaml")
    sample = {"sample_id": "a#0", "question": "Q?\nA. yes\nB. no", "options": {"A": "yes", "B": "no"},
              "answer": "A", "grid": 8, "mask": "(1, 1)-(1, 2)", "anomalous": True}  # fmt: skip
    # P = {(1,1)}, G = {(1,1),(1,2)}: F1 = 2/3 -> detection 4/3 under the paper's rule, + found 2 under the run's
    line = {"completion": "<seg>(1, 1)</seg><think>t</think><answer>A</answer>", "sample": sample, "group": "grpo"}
    (run / "eval" / "grpo.jsonl").write_text(json.dumps(line) + "\n")
    assert run_rows(run)["grpo"]["detection"] == pytest.approx(4 / 3 + 2)
    assert run_rows(run, paper=True)["grpo"]["detection"] == pytest.approx(4 / 3)


def test_a_file_grouped_by_class_gives_its_overall_row(tmp_path):
    """rlad eval writes one group per class; the sweep's whole-held-out rows read the overall one."""
    import json

    from seeds import rescored_row

    from rlad.config import load_config, save_config

    root = Path(__file__).resolve().parents[2]
    save_config(load_config(root / "configs/demo.yaml"), tmp_path / "config.yaml")
    sample = {"sample_id": "a#0", "question": "Q?\nA. yes\nB. no", "options": {"A": "yes", "B": "no"},
              "answer": "A", "grid": 8, "mask": "(1, 1)", "anomalous": True}  # fmt: skip
    right = {"completion": "<seg>(1, 1)</seg><think>t</think><answer>A</answer>", "sample": sample, "group": "pill"}
    wrong = {"completion": "<seg></seg><think>t</think><answer>B</answer>", "sample": sample, "group": "wood"}
    path = tmp_path / "completions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (right, wrong)))
    row = rescored_row(path, tmp_path / "config.yaml", paper=True)
    assert row["n"] == 2
    assert row["answer_acc"] == pytest.approx(0.5)
    assert row["image_F1"] == pytest.approx(2 / 3)  # one hit, one miss, no false alarm: P 1, R 1/2


def test_a_lever_sweep_pairs_its_final_policies_with_another_sweeps():
    """``--against``: the other sweep's final policies as a row of their own, and this sweep's paired with them."""
    # demo GRPO totals 2.0, 2.2, 1.8; the lever's 2.1, 2.3, 1.9 (+0.1 each, sd ~0: half-width 0.000);
    # patch F1 +0.05, +0.06, +0.07 -> 0.060 ± 0.025 *
    reports = {s: {"rows": {"demo:grpo_all": _row(w, 0.1, n=3315), "grpo_all": _row(w + 0.1, 0.1 + d, n=3315)}}
               for s, w, d in ((0, 2.0, 0.05), (1, 2.2, 0.06), (2, 1.8, 0.07))}  # fmt: skip
    text = sweep_table(reports, {s: (0.0, 0.1) for s in range(3)}, [("grpo_all", "demo:grpo_all")])
    lines = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in text.splitlines()
             if line.startswith("| ")}  # fmt: skip
    assert lines["demo:grpo_all"][:2] == ["3315", "2.000 ± 0.497"]
    pair = lines["grpo_all − demo:grpo_all"]
    assert pair[0] == "paired" and pair[1 + COLUMNS.index("patch_F1")] == "0.060 ± 0.025 *"
    assert pair[1].startswith("0.100 ± 0.000")


def test_a_sweep_with_its_own_warm_starts_pairs_them_with_the_other_sweeps(tmp_path):
    """An SFT or model lever trains its own warm starts: ``--against`` pairs those rows too, and a row that one
    seed lacks is left out of the table instead of failing it."""
    from seeds import same_warm_start

    for run, start in (("a", "x"), ("b", "x"), ("c", "y")):
        (tmp_path / run).mkdir()
        (tmp_path / run / "report.json").write_text(json.dumps({"warm_start": str(tmp_path / start)}))
    assert same_warm_start(tmp_path / "a", tmp_path / "b") and not same_warm_start(tmp_path / "a", tmp_path / "c")
    reports = {s: {"rows": {"warm_start_all": _row(2.0 + s / 10, 0.5 + d, n=3315),
                            "demo:warm_start_all": _row(2.0 + s / 10, 0.5, n=3315)}}
               for s, d in ((0, 0.01), (1, 0.02), (2, 0.03))}  # fmt: skip
    reports[2]["rows"]["only_seed_2"] = _row(1.0, 0.1, n=10)
    text = sweep_table(reports, {s: (0.0, 0.1) for s in range(3)}, [("warm_start_all", "demo:warm_start_all")])
    lines = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in text.splitlines()
             if line.startswith("| ")}  # fmt: skip
    # patch F1 +0.01, +0.02, +0.03: 0.020 ± 4.303 * 0.01 / sqrt(3), which holds 0 (no *)
    assert lines["warm_start_all − demo:warm_start_all"][1 + COLUMNS.index("patch_F1")] == "0.020 ± 0.025"
    assert "only_seed_2" not in lines


def test_against_a_folder_without_the_seeds_runs_is_refused_before_anything_runs(tmp_path):
    import subprocess

    script = Path(__file__).resolve().parents[2] / "experiments" / "learning" / "seeds.py"
    (tmp_path / "seed-0").mkdir()
    (tmp_path / "seed-0" / "report.json").write_text("{}")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(script), "--heldout-all", "--against", str(tmp_path), "--out", str(out)],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2
    assert f"--against {tmp_path} holds no finished run for seed-1, seed-2 (no report.json)" in done.stderr
    assert not out.exists()
