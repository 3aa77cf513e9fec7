"""Paper Table 7, reward mixes: without the answer reward, without the detection reward, all. A reward
left out keeps weight 0: still computed and logged, not trained on. Every variant starts from the same SFT
policy (the mix only matters to GRPO).

    python experiments/ablations/reward_mix.py [--config configs/demo.yaml] [--out runs/ablations] [key=value ...]

Writes ``<out>/reward_mix.md`` and ``<out>/reward_mix_rewards.png``, then the cheap form of the same ablation:
the "All" run's replay store re-scored under each mix (``rlad rescore``, nothing generated), in
``<out>/reward_mix_rescored.md``.
"""

import subprocess
import sys
from pathlib import Path

from common import ROOT, Variant, parse_args, run_table, train

VARIANTS = [
    Variant("w/o AAR", overrides=("rewards.answer.weight=0",)),
    Variant("w/o DAR", overrides=("rewards.detection.weight=0",)),
    Variant("All"),
]

if __name__ == "__main__":
    args = parse_args(__doc__)
    run_table(
        "Reward function (paper Table 7)",
        "AAR: answer accuracy reward; DAR: detection accuracy reward. SFT then GRPO.",
        VARIANTS,
        args,
        "reward_mix",
    )
    run = train(VARIANTS[-1], args).parent  # already trained above: its run folder
    parts = [
        '# The same reward mixes by re-scoring the replay store of the "All" run\n',
        "Every stored completion of the run, scored again under each mix: the policy is the one trained with "
        "all rewards, so this shows how each mix would have *rated* the same samples, per step.\n",
    ]
    for v in VARIANTS:
        command = [sys.executable, "-m", "rlad.cli", "rescore", str(run), "--config", args.config, *v.overrides]
        table = subprocess.run(command, check=True, cwd=ROOT, capture_output=True, text=True).stdout
        parts.append(f"## {v.name}\n\n```\n{table.rstrip()}\n```\n")
    path = Path(args.out) / "reward_mix_rescored.md"
    path.write_text("\n".join(parts))
    print("\n".join(parts) + f"\nwritten to {path}")
