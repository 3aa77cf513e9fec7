"""Seconds per weight sync (learner -> rollout worker, verified) against model size, for both transports,
side by side in one run: Ray's object store and the bucketed broadcast (gloo here; NCCL on GPUs).

Models: the tiny Qwen2.5-VL and larger random-init configs of the same architecture (built here, no download).
A sync is what ``rlad train`` does after every step: learner state out, every engine loaded, fingerprints
compared. One learner, one rollout worker, on this machine.

    python experiments/bench/weight_sync.py [--repeats 3] [--sizes tiny medium large]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ray
from common import table

from rlad.config import load_config

SIZES = {  # fields of rlad.tiny.TinySpec
    "tiny": {},
    "medium": {"hidden_size": 512, "intermediate_size": 1536, "num_layers": 8, "num_heads": 8, "num_kv_heads": 4},
    "large": {"hidden_size": 1024, "intermediate_size": 4096, "num_layers": 12, "num_heads": 16, "num_kv_heads": 4,
              "vision_depth": 4, "vision_hidden_size": 256, "vision_heads": 4},
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    args = parser.parse_args()

    from rlad.cluster import Cluster
    from rlad.policy import parameter_count, resolve_model_path

    work = Path(tempfile.mkdtemp(prefix="rlad-bench-"))
    ray.init(num_cpus=2, include_dashboard=False)
    rows = []
    for size in args.sizes:
        tiny = [f"model.tiny.{k}={v}" for k, v in SIZES[size].items()]
        for transport in ("object_store", "broadcast"):
            overrides = ["model.path=tiny", *tiny, f"rollout.weight_sync={transport}", "rollout.num_cpus=0.5",
                         "learner.num_cpus=0.5", f"train.run_dir={work}"]  # fmt: skip
            config = load_config(None, overrides)
            config.model.path = str(resolve_model_path(config.model))
            cluster = Cluster(config, config.model.path)
            try:
                megabytes = cluster.sync_weights(0)  # warm-up (and the broadcast group forms here)
                times = []
                for v in range(1, args.repeats + 1):
                    start = time.perf_counter()
                    cluster.sync_weights(v)
                    times.append(time.perf_counter() - start)
            finally:
                cluster.shutdown()
            seconds = sorted(times)[len(times) // 2]
            params = parameter_count(config.model.path) / 1e6
            rows.append({"model": size, "parameters (M)": params, "transport": transport, "MB": megabytes,
                         "s/sync": seconds, "MB/s": megabytes / seconds})  # fmt: skip
            print(table(rows[-1:], list(rows[-1])), flush=True)
            time.sleep(1)
    print()
    print(table(rows, list(rows[0])))
    ray.shutdown()


if __name__ == "__main__":
    main()
