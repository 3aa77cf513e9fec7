"""Paper Table 5, training strategies: SFT alone, GRPO alone, SFT then GRPO.

The paper's GRPO alone starts from an instruct model that already writes the format. Here it starts from the
tiny model's base stage (``model.base.images=4000``, rlad/base_stage.py: generic questions about spotted
objects in the output format, no defect, no anomaly mask or label), the stand-in for that instruct model; from
the random-init tiny model it never writes a well-formed answer and learns nothing. SFT and SFT+GRPO start
from the tiny model itself, as the demo does (after the base stage the demo's SFT localised worse: README).

    python experiments/ablations/strategy.py [--config configs/demo.yaml] [--out runs/ablations] [--seeds 0 1 2]
        [key=value ...]

Writes ``<out>/strategy.md`` (understanding and detection tables) and ``<out>/strategy_rewards.png``.
"""

from common import Variant, parse_args, run_table

VARIANTS = [
    Variant("SFT", sft=True, grpo=False),
    Variant("GRPO", sft=False, grpo=True, overrides=("model.base.images=4000",)),
    Variant("SFT+GRPO"),
]

if __name__ == "__main__":
    run_table(
        "Training strategy (paper Table 5)",
        "GRPO alone starts from the tiny model's base stage (`model.base.images=4000 train.warm_start=base`: "
        "generic spotted-object questions in the output format, no defect, no anomaly label); SFT and SFT+GRPO "
        "from the tiny model itself, as the demo.",
        VARIANTS,
        parse_args(__doc__),
        "strategy",
    )
