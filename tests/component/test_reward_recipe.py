"""The README's two ways to add a reward, done the way a user does them: a module in this package (the README's
code, as written, in a copy of ``rewards/``) and a broken plugin beside a working one; then ``rlad rewards``."""

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readme_reward_code() -> str:
    text = (ROOT / "README.md").read_text()
    after = text.split("**A new reward in ten lines**", 1)[1]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def _rlad(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    # cwd first on the path: its rewards/ package stands in for the checkout's, as an edited clone would
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "PYTHONPATH": str(cwd)}
    return subprocess.run([sys.executable, "-m", "rlad.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_the_readme_in_tree_recipe_works_as_written(tmp_path):
    shutil.copytree(ROOT / "rewards", tmp_path / "rewards", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "rewards" / "think_length.py").write_text(_readme_reward_code())
    with (tmp_path / "rewards" / "__init__.py").open("a") as f:
        f.write("from rewards import think_length  # noqa: F401\n")

    listed = _rlad(tmp_path, "rewards")
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"think_length\s+params: target=300", listed.stdout)
    scored = subprocess.run(
        [sys.executable, "-c", textwrap.dedent("""
            from rewards import RewardMix, get_reward
            RewardMix({"think_length": {"weight": 0.5, "target": 200}})  # a config may name it
            print(get_reward("think_length")(["<think>" + "x" * 20 + "</think>"], [None], target=20)[0])
        """)],
        cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(tmp_path)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr
    assert float(scored.stdout.split()[-1]) == 1.0


def test_a_broken_plugin_leaves_rlad_rewards_working_and_is_named(tmp_path):
    (tmp_path / "good_rewards.py").write_text("def good(completion, sample):\n    '''Always one.'''\n    return 1.0\n")
    for name, entry in (("good-rewards", "good = good_rewards:good"), ("broken-rewards", "broken = gone_module:fn")):
        dist = tmp_path / f"{name}-1.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        (dist / "entry_points.txt").write_text(f"[rlad.rewards]\n{entry}\n")

    listed = _rlad(tmp_path, "rewards")
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^good\s+params: -", listed.stdout, re.M) and "format" in listed.stdout
    assert "broken = gone_module:fn (package broken-rewards) did not load: ModuleNotFoundError" in listed.stdout
