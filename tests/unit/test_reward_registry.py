"""The reward registry: decorator, batched form, entry-point plugins, and errors."""

import sys
import textwrap

import pytest
from conftest import make_sample

from rewards import RewardMix, get_reward, known_rewards, registry, reward


@pytest.fixture
def clean_registry(monkeypatch):
    """Registrations made by a test vanish after it; entry points are looked up afresh."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)


def test_decorated_function_joins_a_mix(clean_registry):
    @reward("length_penalty")
    def length_penalty(completion, sample, *, per_char: float = 0.01) -> float:
        return -per_char * len(completion)

    mix = RewardMix({"length_penalty": {"weight": 2.0, "per_char": 0.5}})
    assert mix.score(["abcd"], [make_sample()]).total.tolist() == [-4.0]
    assert "length_penalty" in known_rewards()


def test_batched_reward(clean_registry):
    calls = []

    @reward("batch_len", batched=True)
    def batch_len(completions, samples):
        calls.append(len(completions))
        return [float(len(c)) for c in completions]

    s = RewardMix({"batch_len": {}}).score(["a", "bb", "ccc"], [make_sample()] * 3)
    assert s.components["batch_len"].tolist() == [1.0, 2.0, 3.0] and calls == [3]


def test_bad_registrations(clean_registry):
    with pytest.raises(ValueError, match="already registered"):
        reward("format")(lambda c, s: 0.0)
    with pytest.raises(TypeError, match="positionally"):
        reward("one_arg")(lambda c: 0.0)
    with pytest.raises(TypeError, match="needs a default"):

        @reward("no_default")
        def no_default(c, s, *, k):
            return 0.0


def test_non_finite_or_wrongly_sized_reward_output_is_an_error(clean_registry):
    reward("nan_reward")(lambda c, s: float("nan"))
    reward("short", batched=True)(lambda cs, ss: [0.0])
    with pytest.raises(ValueError, match="reward 'nan_reward' returned nan for completion 0"):
        RewardMix({"nan_reward": {}}).score(["x"], [make_sample()])
    with pytest.raises(ValueError, match="reward 'short' returned 1 values for 2 completions"):
        RewardMix({"short": {}}).score(["x", "y"], [make_sample()] * 2)


def test_third_party_rewards_come_through_entry_points(clean_registry, tmp_path, monkeypatch):
    # A real installed-distribution layout: a module plus a dist-info folder declaring the entry points.
    (tmp_path / "acme_rewards.py").write_text(
        textwrap.dedent(
            """
            from rewards import reward

            @reward("acme_module_reward")
            def by_decorator(completion, sample):
                return 0.5

            def by_entry_point(completion, sample, *, scale: float = 1.0):
                return scale * completion.count("defect")
            """
        )
    )
    dist = tmp_path / "acme_rewards-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-rewards\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[rlad.rewards]\nacme = acme_rewards\nacme_count = acme_rewards:by_entry_point\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "acme_rewards", raising=False)

    assert get_reward("acme_count").params == {"scale": 1.0}
    assert {"acme_module_reward", "acme_count"} <= set(known_rewards())
    mix = RewardMix({"acme_count": {"scale": 2.0}, "acme_module_reward": {"weight": 1.0}})
    assert mix.score(["defect, defect"], [make_sample()]).total.tolist() == [4.5]


def _plugin(tmp_path, name: str, entry_points: str) -> None:
    dist = tmp_path / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[rlad.rewards]\n{entry_points}\n")


def test_a_broken_plugin_is_named_and_the_others_still_load(clean_registry, tmp_path, monkeypatch, caplog):
    (tmp_path / "good_rewards.py").write_text("def good(completion, sample):\n    return 1.0\n")
    _plugin(tmp_path, "good-rewards", "good = good_rewards:good")
    _plugin(tmp_path, "broken-rewards", "broken = no_such_module_here:fn")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_BROKEN", {})

    assert get_reward("good").fn(None, None) == 1.0  # the good plugin loads, the broken one raises nothing
    assert "broken = no_such_module_here:fn (package broken-rewards)" in caplog.text
    assert registry.broken_plugins() == {
        "broken = no_such_module_here:fn (package broken-rewards)": "ModuleNotFoundError: No module named "
        "'no_such_module_here'"
    }
    with pytest.raises(registry.UnknownRewardError) as err:
        get_reward("broken")
    assert "plugins that failed to load: broken = no_such_module_here:fn (package broken-rewards): " in str(err.value)


def test_a_misspelt_reward_gets_a_suggestion():
    with pytest.raises(registry.UnknownRewardError, match=r"unknown reward 'detektion' \(did you mean 'detection'\?\)"):
        get_reward("detektion")
    with pytest.raises(registry.UnknownRewardError) as err:
        get_reward("zzzz")
    assert "did you mean" not in str(err.value)


def test_parameter_types_are_checked_exactly(clean_registry):
    from rewards import RewardSpecError

    @reward("counted")
    def counted(completion, sample, *, target: int = 300, scale: float = 1.0) -> float:
        return 0.0

    with pytest.raises(RewardSpecError, match=r"rewards.counted.target must be an integer \(default 300\), got 100.7"):
        RewardMix({"counted": {"target": 100.7}})
    RewardMix({"counted": {"target": 100, "scale": 2}})  # an integer is a number
    with pytest.raises(RewardSpecError, match=r"rewards\.counted\.target must be an integer"):
        RewardMix({"counted": {"target": True}})


def test_a_reward_names_only_blocks_that_exist(clean_registry):
    with pytest.raises(ValueError, match="blocks must name some of seg, think, answer"):

        @reward("judges_the_title", blocks=("title",))
        def judges_the_title(completion, sample) -> float:
            return 0.0
