"""Paper Table 7, reward mixes: without the answer reward, without the detection reward, all. A reward
left out keeps weight 0: still computed and logged, not trained on. Every variant starts from the same SFT
policy (the mix only matters to GRPO).

    python experiments/ablations/reward_mix.py [--config configs/demo.yaml] [--out runs/ablations] [--seeds 0 1 2]
        [key=value ...]

Writes ``<out>/reward_mix.md`` and ``<out>/reward_mix_rewards.png``, then the cheap form of the same ablation:
the first seed's "All" run's replay store re-scored under each mix (nothing generated: the learning signal each
mix would have given the same samples), in ``<out>/reward_mix_rescored.md``.
"""

from pathlib import Path

from common import Variant, parse_args, run_table, train

VARIANTS = [
    Variant("w/o AAR", overrides=("rewards.answer.weight=0",)),
    Variant("w/o DAR", overrides=("rewards.detection.weight=0",)),
    Variant("All"),
]


def rescored_table(run: Path, args) -> str:
    """The "All" run's replay store re-scored under each mix (nothing generated, ``rlad.rescore``): the mean total
    each mix gives early and late in the run, and how the learning signal differs — the share of groups with no
    signal at all (every completion scored alike), the share of completions whose advantage has the opposite sign
    to the one the run trained with, and the rank correlation of the advantages with the trained ones."""
    import numpy as np

    from rewards import RewardMix
    from rlad.config import load_config
    from rlad.replay import ReplayStore
    from rlad.rescore import compare_mixes, mix_signal, stored_signal
    from rlad.tables import markdown_table

    groups = ReplayStore(run / "replay").groups()
    steps = sorted({g.step for g in groups})
    quarter = max(1, len(steps) // 4)
    early, late = set(steps[:quarter]), set(steps[-quarter:])
    scale = load_config(run / "config.yaml").grpo.advantage_scale
    signals = [
        mix_signal(v.name, groups, RewardMix(load_config(args.config, [*args.overrides, *v.overrides]).rewards), scale)
        for v in VARIANTS
    ]
    compared = compare_mixes(signals, stored_signal(groups))

    def mean_total(s, when):
        return np.mean([t.mean() for t, g in zip(s.totals, groups, strict=True) if g.step in when])

    rows = [
        [s.name, f"{mean_total(s, early):.3f}", f"{mean_total(s, late):.3f}",
         *(f"{c[k]:.3f}" if c[k] == c[k] else "—" for k in ("no_signal_groups", "sign_flips", "rank_corr"))]
        for s, c in zip(signals, compared, strict=True)
    ]  # fmt: skip
    header = ["mix", f"mean total, steps {min(early)}-{max(early)}", f"mean total, steps {min(late)}-{max(late)}",
              "groups without signal", "advantages of opposite sign", "rank correlation"]  # fmt: skip
    return (
        '# The reward mixes by re-scoring the replay store of the "All" run\n\n'
        f"{len(groups)} stored groups of `{run.parent.name}/{run.name}`, scored again under each mix (nothing "
        "generated; what `rlad rescore` does). The policy is the one trained with all rewards: this shows how each "
        "mix would have rated the same samples and how different a learning signal it would have given (advantages "
        "as the run computed them, compared with the ones it stored).\n\n" + markdown_table(header, rows)
    )


if __name__ == "__main__":
    args = parse_args(__doc__)
    run_table(
        "Reward function (paper Table 7)",
        "AAR: answer accuracy reward; DAR: detection accuracy reward. SFT then GRPO.",
        VARIANTS,
        args,
        "reward_mix",
    )
    run = train(VARIANTS[-1], args, args.seeds[0]).parent  # already trained above: its run folder
    path = Path(args.out) / "reward_mix_rescored.md"
    path.write_text(rescored_table(run, args))
    print(path.read_text() + f"\nwritten to {path}")
