"""Paper Table 6, multimodal reasoning: the answer layout without visual reasoning (<seg>), without textual
reasoning (<think>), without both, and all. Each variant is taught (SFT targets, system prompt) and rewarded
(format reward) for its own layout via ``output.blocks``; without <seg> the detection reward is off.

    python experiments/ablations/reasoning.py [--config configs/demo.yaml] [--out runs/ablations] [--seeds 0 1 2]
        [key=value ...]

Writes ``<out>/reasoning.md`` and ``<out>/reasoning_rewards.png``.
"""

from common import Variant, parse_args, run_table

VARIANTS = [
    Variant("w/o V&T", overrides=("output.blocks=[answer]", "rewards.detection.weight=0")),
    Variant("w/o V", overrides=("output.blocks=[think,answer]", "rewards.detection.weight=0")),
    Variant("w/o T", overrides=("output.blocks=[seg,answer]",)),
    Variant("All"),
]

if __name__ == "__main__":
    run_table(
        "Multimodal reasoning (paper Table 6)",
        "V: visual reasoning, the `<seg>` block; T: textual reasoning, the `<think>` block. SFT then GRPO.",
        VARIANTS,
        parse_args(__doc__),
        "reasoning",
    )
