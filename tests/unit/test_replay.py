"""The replay store: round trip, atomic parts, standard-tool access, selection functions, offline re-scoring."""

import pyarrow.parquet as pq
import pytest
from conftest import make_sample

from rewards import RewardMix
from rlad.config import paper_rewards
from rlad.replay import Baseline, Group, ReplayStore, informative, replay_candidates, rescore, score_groups


def group(gid, step=0, version=0, totals=(1.0, 0.0), sample=None):
    n = len(totals)
    return Group(
        group_id=gid,
        step=step,
        policy_version=version,
        sample=sample or make_sample(patches=[(1, 1)], sample_id=f"s-{gid}"),
        completions=[f"c{i}" for i in range(n)],
        token_ids=[[1, 2, i] for i in range(n)],
        logprobs=[[-0.5, -0.25, -1.0] for _ in range(n)],
        rewards={"format": [1.0] * n, "answer": list(totals)},
        totals=list(totals),
        advantages=[t - sum(totals) / n for t in totals],
    )


def test_round_trip_and_standard_tools(tmp_path):
    store = ReplayStore(tmp_path / "replay")
    store.append([group("a", step=1), group("b", step=1, totals=(2.0, 2.0))])
    store.append([group("c", step=2, version=1)])
    assert len(store) == 6 and len(store.parts()) == 2
    back = store.groups()
    assert [g.group_id for g in back] == ["a", "b", "c"]
    a = back[0]
    assert a.token_ids == [[1, 2, 0], [1, 2, 1]] and a.logprobs[0] == [-0.5, -0.25, -1.0]
    assert a.rewards == {"answer": [1.0, 0.0], "format": [1.0, 1.0]} and a.advantages == [0.5, -0.5]
    assert a.sample.mask[1, 1] and a.sample.sample_id == "s-a"
    assert [g.group_id for g in store.groups(min_step=2)] == ["c"]
    # anyone can open the store with pyarrow (or pandas) alone
    table = pq.read_table(tmp_path / "replay")
    assert table.num_rows == 6 and {"completion", "total", "reward.answer", "policy_version"} <= set(table.column_names)


def test_an_interrupted_write_is_invisible(tmp_path):
    store = ReplayStore(tmp_path)
    store.append([group("a")])
    (tmp_path / ".part-000000009-deadbeef.parquet.tmp").write_bytes(b"PAR1 half a file")
    assert [g.group_id for g in store.groups()] == ["a"]
    assert pq.read_table(tmp_path).num_rows == 2  # the dataset reader skips dot-files too
    assert store.append([]) is None and len(store.parts()) == 1


def test_inconsistent_groups_are_refused():
    with pytest.raises(ValueError, match="differ in length"):
        Group("x", 0, 0, make_sample(), ["a", "b"], [[1]], [[0.0]], {}, [1.0], [0.0])
    with pytest.raises(ValueError, match="2 token ids but 1 logprobs"):
        Group("x", 0, 0, make_sample(), ["a"], [[1, 2]], [[0.0]], {}, [1.0], [0.0])


def test_selection_functions():
    groups = [group("new", version=5), group("flat", version=5, totals=(1.0, 1.0)), group("old", version=1)]
    assert [g.group_id for g in informative(groups)] == ["new", "old"]
    assert [g.group_id for g in replay_candidates(groups, policy_version=5, max_staleness=2)] == ["new"]
    assert [g.group_id for g in replay_candidates(groups, policy_version=5, max_staleness=4)] == ["new", "old"]


def test_rescore_under_another_mix(tmp_path):
    sample = make_sample(patches=[(1, 1)], answer="A")
    right = "<seg>(1, 1)-(1, 1)</seg><think>t</think><answer>A</answer>"
    wrong = "<seg></seg><think>t</think><answer>B</answer>"
    g = group("g", sample=sample)
    g.completions = [right, wrong]
    store = ReplayStore(tmp_path)
    store.append([g])
    paper = rescore(store, RewardMix(paper_rewards()))
    # right: format 1 + detection 2 * F1(1) + answer 1 = 4; wrong: 1 + 0 (empty mask on a defect) + 0.1
    assert [r["total"] for r in paper] == pytest.approx([4.0, 1.1])
    no_answer = rescore(store, RewardMix({**paper_rewards(), "answer": {"weight": 0.0}}))
    assert [r["total"] for r in no_answer] == pytest.approx([3.0, 1.0])
    assert no_answer[1]["answer"] == pytest.approx(0.1)  # computed and kept even at weight 0


def test_cli_rescore_prints_per_step_under_the_new_mix(tmp_path, capsys):
    from rlad.cli import main

    sample = make_sample(patches=[(1, 1)], answer="A")
    g = group("g", step=3, sample=sample)
    g.completions = ["<seg>(1, 1)-(1, 1)</seg><think>t</think><answer>A</answer>", "junk"]
    ReplayStore(tmp_path / "run" / "replay").append([g])
    main(["rescore", str(tmp_path / "run"), "rewards.answer.weight=0"])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("step 3"))
    assert row.split()[2:4] == ["2", "1.500"]  # n = 2; total (3 + 0) / 2 with the answer reward weighted 0
    with pytest.raises(SystemExit) as exit_info:
        main(["rescore", str(tmp_path / "nothing")])
    assert exit_info.value.code == 2


def test_per_block_advantages_round_trip(tmp_path):
    from dataclasses import replace

    store = ReplayStore(tmp_path / "replay")
    shares = [{"all": 0.1, "seg": 0.5}, {"all": -0.1, "seg": -0.5}]
    store.append([replace(group("a"), block_advantages=shares), group("b")])
    a, b = store.groups()
    assert a.block_advantages == shares and b.block_advantages is None
    with pytest.raises(ValueError, match="differ in length"):
        replace(group("c"), block_advantages=shares[:1])


def test_a_greedy_baseline_is_stored_with_its_group_and_never_sampled(tmp_path):
    from dataclasses import replace

    greedy = Baseline("greedy text", [7, 8], [-0.5, -0.25], {"format": 1.0, "answer": 0.5}, 1.5)
    flat = replace(group("flat", totals=(1.0, 1.0)), baseline=greedy)  # samples agree, the greedy one does not
    store = ReplayStore(tmp_path / "replay")
    store.append([flat, group("plain")])
    table = pq.read_table(tmp_path / "replay").to_pylist()
    row = next(r for r in table if r["index"] == -1)
    assert row["completion"] == "greedy text" and row["advantage"] is None and row["reward.answer"] == 0.5
    back, plain = store.groups()
    assert back.baseline == greedy and back.completions == ["c0", "c1"] and plain.baseline is None
    assert [g.group_id for g in informative([back, group("agree", totals=(1.0, 1.0))])] == ["flat"]
    assert len(rescore(store, RewardMix(paper_rewards()))) == 4  # the sampled completions only


def test_score_groups_measures_samples_against_the_greedy_completion():
    from types import SimpleNamespace

    from rlad.config import load_config

    sample = make_sample(patches=[(1, 1)], answer="A")
    right = "<seg>(1, 1)-(1, 1)</seg><think>t</think><answer>A</answer>"
    wrong = "<seg></seg><think>t</think><answer>B</answer>"
    config = load_config(None, ["grpo.group_size=2", "grpo.advantage_scale=none", "grpo.credit=block"])
    config.rewards.update(paper_rewards())

    def done(text, ids):
        return SimpleNamespace(text=text, token_ids=ids, logprobs=[-0.5] * len(ids), policy_version=3)

    completions = [done(right, [1, 2]), done(wrong, [3])]
    _, scores, (g,) = score_groups(config, [sample], completions, 4, greedy=[done(right, [1, 2])])
    # paper's mix: right 1 + 2 * 1 + 1 = 4, wrong 1 + 0 + 0.1 = 1.1; the greedy completion is right: 4
    assert [s["total"] for s in scores] == pytest.approx([4.0, 1.1])
    assert g.baseline.total == pytest.approx(4.0) and g.baseline.token_ids == [1, 2]
    assert g.advantages == pytest.approx([0.0, -2.9])  # against 4, not the group's mean 2.55
    # each reward against the greedy completion's: format 1 - 1, detection 0 - 2, answer 0.1 - 1
    assert g.block_advantages[1] == pytest.approx({"all": 0.0, "seg": -2.0, "think": -0.9, "answer": -0.9})
    _, _, (plain,) = score_groups(config, [sample], completions, 4)
    assert plain.baseline is None and plain.advantages == pytest.approx([1.45, -1.45])
    with pytest.raises(ValueError, match="2 greedy completions for 1 prompts"):
        score_groups(config, [sample], completions, 4, greedy=completions)
