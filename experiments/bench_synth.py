"""Generation speed of the procedural benchmark: 1,000 test images at 256x256, 1 process vs all cores.

Target (issue "Data"): 1,000 images at 256x256 well under a minute on this 2-core machine.

    python experiments/bench_synth.py [--images 1000] [--size 256]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from rlad.data.render import CLASSES
from rlad.data.synth import SynthSpec, synthesize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    spec = SynthSpec(images_per_class=args.images // len(CLASSES), references_per_class=4, size=args.size)
    n = spec.images_per_class * len(CLASSES) + spec.references_per_class * len(CLASSES)
    cores = os.cpu_count() or 1
    print(f"{n} images ({args.size}x{args.size}) incl. references, PNG + masks + mmad.json")
    print(f"{'processes':<10}{'seconds':>10}{'images/s':>10}")
    times = {}
    for workers in sorted({1, cores}):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            synthesize(spec, out, workers=workers)
            times[workers] = time.perf_counter() - start
        print(f"{workers:<10}{times[workers]:>10.1f}{n / times[workers]:>10.0f}")
    if cores > 1:
        print(f"speed-up with {cores} processes: {times[1] / times[cores]:.2f}x")
    best = min(times.values())
    print(f"target: {n} images well under 60 s -> {best:.1f} s ({best / 60:.2f} of a minute)")


if __name__ == "__main__":
    main()
