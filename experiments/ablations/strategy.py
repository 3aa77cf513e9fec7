"""Paper Table 5, training strategies: SFT alone, GRPO alone (from the untrained model), SFT then GRPO.

    python experiments/ablations/strategy.py [--config configs/demo.yaml] [--out runs/ablations] [--seeds 0 1 2]
        [key=value ...]

Writes ``<out>/strategy.md`` (understanding and detection tables) and ``<out>/strategy_rewards.png``.
"""

from common import Variant, parse_args, run_table

VARIANTS = [
    Variant("SFT", sft=True, grpo=False),
    Variant("GRPO", sft=False, grpo=True),
    Variant("SFT+GRPO"),
]

if __name__ == "__main__":
    run_table(
        "Training strategy (paper Table 5)",
        "GRPO alone starts from the randomly initialised tiny model (`train.warm_start=base`).",
        VARIANTS,
        parse_args(__doc__),
        "strategy",
    )
