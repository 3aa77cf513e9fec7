"""The rollout engine with its bf16 weights packed once for oneDNN (``rollout.pack_weights``) against plain
``torch.nn.Linear``, side by side in one process.

Two engines on the same tiny checkpoint, one packed (``rollout/packed_linear.py``), one not, generate the same
``--prompts`` questions x 8 completions with the same seed, alternately (ABBA); every pair must give the same
tokens and log-probs (else the script stops), and the ratio of their generation times is printed per pair and as
the median. First, the layer products alone at the shapes a decode step of the policy multiplies.

    python experiments/bench/packed_linear.py [--rounds 8] [--prompts 16] [--tokens 64] [--tiny KEY=VALUE ...]

``--tiny`` as in ``demo_speed.py`` (e.g. the 23 M spec: ``hidden_size=384 intermediate_size=1152 num_layers=6
num_heads=6 vision_depth=6 vision_hidden_size=384 vision_heads=6``). Needs a CPU with bf16 units (``rlad.policy
.cpu_bf16_units``); the policy runs in bf16 whatever ``model.dtype: auto`` would pick.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments" / "bench"))


def layer_times(model, rows: int, repeats: int = 200) -> list[list]:
    """Microseconds per call of each distinct (in, out) shape of the model's linear layers on ``rows`` rows, plain
    ``F.linear`` against the packed product (best of 5 runs of ``repeats`` calls each)."""
    import torch

    from rollout.packed_linear import PackedLinear, pack_linears

    shapes = sorted({(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)})
    out = []
    for features_in, features_out in shapes:
        plain = torch.nn.Linear(features_in, features_out).to(torch.bfloat16)
        packed = torch.nn.Linear(features_in, features_out).to(torch.bfloat16)
        packed.load_state_dict(plain.state_dict())
        pack_linears(packed)
        assert isinstance(packed, PackedLinear)
        x = torch.randn(rows, features_in, dtype=torch.bfloat16)
        times = []
        with torch.no_grad():
            for layer in (plain, packed):
                layer(x)
                best = float("inf")
                for _ in range(5):
                    start = time.perf_counter()
                    for _ in range(repeats):
                        layer(x)
                    best = min(best, (time.perf_counter() - start) / repeats)
                times.append(best * 1e6)
        out.append([f"{rows} x {features_in} -> {features_out}", f"{times[0]:.0f}", f"{times[1]:.0f}",
                    f"{times[0] / times[1]:.2f}x"])  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8, help="generations per engine, alternated (ABBA)")
    parser.add_argument("--prompts", type=int, default=16, help="questions per generation, 8 completions each")
    parser.add_argument("--tokens", type=int, default=64, help="max new tokens (the untrained policy writes them all)")
    parser.add_argument("--tiny", nargs="*", default=[], metavar="KEY=VALUE", help="tiny model sizes (TinySpec)")
    args = parser.parse_args()

    import torch
    from common import make_data, table

    from rlad.config import load_config
    from rlad.data.readers import read_mmad
    from rlad.policy import cpu_bf16_units, resolve_model_path, set_threads
    from rollout.packed_linear import PackedLinear, can_pack
    from rollout.worker import make_engine

    if not can_pack():
        sys.exit("no CPU bf16 units (AMX / AVX512-BF16) or no oneDNN in this torch: nothing to compare")
    set_threads(0)
    tiny = [f"model.tiny.{kv}" for kv in args.tiny]
    checkpoint = str(resolve_model_path(load_config(ROOT / "configs/demo.yaml", tiny).model))
    data = make_data(Path(tempfile.mkdtemp(prefix="rlad-packed-")) / "data", per_class=8)
    rows = 8 * args.prompts
    overrides = [*tiny, f"data.root={data}", f"model.path={checkpoint}", "model.dtype=bfloat16",
                 f"generation.max_new_tokens={args.tokens}", f"rollout.batch_size={rows}"]  # fmt: skip
    config = load_config(ROOT / "configs/demo.yaml", overrides)
    samples = read_mmad(data / "mmad.json", data, grid=config.mask.grid, shots=0)[0][: args.prompts]
    plain_config = load_config(ROOT / "configs/demo.yaml", [*overrides, "rollout.pack_weights=false"])
    engines = {"plain": make_engine(plain_config, checkpoint), "packed": make_engine(config, checkpoint)}
    assert not any(isinstance(m, PackedLinear) for m in engines["plain"].model.modules())
    print(f"CPU bf16 units: {cpu_bf16_units()}, torch threads {torch.get_num_threads()}, "
          f"tiny spec: {' '.join(args.tiny) or 'demo'}; layer products, bf16, microseconds per call:")  # fmt: skip
    columns = ["shape", "plain", "packed", "ratio"]
    products = layer_times(engines["plain"].model, rows)
    print(table([dict(zip(columns, r, strict=True)) for r in products], columns))
    for engine in engines.values():
        engine.generate(samples, n=8, seed=0)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in engines}
    for k in range(args.rounds):
        order = ["plain", "packed"] if k % 4 in (0, 3) else ["packed", "plain"]
        made = {}
        for name in order:
            start = time.perf_counter()
            made[name] = engines[name].generate(samples, n=8, seed=1 + k)
            times[name].append(time.perf_counter() - start)
        for a, b in zip(made["plain"], made["packed"], strict=True):
            if a.token_ids != b.token_ids or a.logprobs != b.logprobs:
                sys.exit(f"round {k}: the packed engine wrote other tokens or log-probs than the plain one")
    ratios = [a / b for a, b in zip(times["plain"], times["packed"], strict=True)]
    print(f"\n{rows} completions a generation, {args.rounds} rounds, identical tokens and log-probs in every round")
    print(f"generate s, plain: {' '.join(f'{t:.2f}' for t in times['plain'])}")
    print(f"generate s, packed: {' '.join(f'{t:.2f}' for t in times['packed'])}")
    print(f"packed generation {statistics.median(ratios):.2f}x (median of the rounds' ratios; "
          f"range {min(ratios):.2f}-{max(ratios):.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
