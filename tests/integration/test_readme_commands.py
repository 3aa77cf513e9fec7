"""The README's "After `make demo`" commands, run exactly as written after a short demo in a folder laid out
like a fresh clone (configs/ and the .venv), so a path or a flag in the README that stops working fails here."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHORT_DEMO = [
    "data.synth.images_per_class=8", "sft.max_steps=4", "sft.eval_samples=4", "grpo.steps=2",
    "grpo.prompts_per_step=2", "grpo.group_size=2", "generation.max_new_tokens=16", "train.eval_samples=4",
    "train.eval_sampled=0", "train.save_steps=1",
]  # fmt: skip


def readme_commands() -> list[str]:
    """The lines of the README's after-demo block (between its two markers), comments stripped."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- after-demo -->\s*```bash\n(.*?)```\s*<!-- /after-demo -->", text, re.S)
    assert block, "README.md lost its <!-- after-demo --> block"
    lines = [line.split("  #")[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_the_readme_block_names_the_journeys():
    commands = readme_commands()
    assert commands[0] == "source .venv/bin/activate"
    for verb in ("rlad train resume=runs/demo/latest", "rlad rescore runs/demo/latest", "rlad eval", "rlad export",
                 "rlad predict", "read_table('runs/demo/latest/replay')"):  # fmt: skip
        assert any(verb in c for c in commands), verb


def test_the_readme_commands_work_after_a_short_demo(tmp_path):
    clone = tmp_path / "clone"
    clone.mkdir()
    shutil.copytree(REPO / "configs", clone / "configs")
    (clone / ".venv").symlink_to(Path(sys.prefix))  # the clone's own environment, as `make demo` builds it
    demo = f"source .venv/bin/activate && rlad demo --config configs/demo.yaml {' '.join(SHORT_DEMO)}"
    done = subprocess.run(["bash", "-c", demo], cwd=clone, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    latest = clone / "runs/demo/latest"
    assert latest.is_symlink() and (latest / "final/config.json").is_file()
    assert "(also runs/demo/latest)" in done.stdout

    script = "set -euxo pipefail\n" + "\n".join(readme_commands())
    done = subprocess.run(["bash", "-c", script], cwd=clone, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    assert "completions" in done.stdout and (clone / "served/rlad-tiny/model.safetensors").is_file()
