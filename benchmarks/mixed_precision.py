"""Is bfloat16 mixed precision worth it on this CPU? Times training steps of the localiser
in float32 and in mixed_bfloat16, alternating, in one run, and prints both and their ratio.

    python benchmarks/mixed_precision.py [--backbone simple] [--size 128] [--batch 16] [--steps 10] [--rounds 3]

Mixed precision only pays where the CPU has bf16 units (AVX512_BF16 or AMX); the script
prints which of those /proc/cpuinfo lists.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from petloc.model import ModelSpec, build_model, compile_model


def cpu_bf16_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if "bf16" in f or f.startswith("amx"))


def training_step(policy: str, args):
    """A compiled model under `policy` and a function that runs `n` training steps on one batch."""
    keras.mixed_precision.set_global_policy(policy)
    spec = ModelSpec(backbone=args.backbone, width=0.5, head_units=128, box_loss="l1", box_loss_weight=5.0)
    model = compile_model(build_model(spec, args.size), spec)
    keras.mixed_precision.set_global_policy("float32")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.batch, args.size, args.size, 3)).astype(np.float32)
    y = {"cls": rng.integers(0, 2, args.batch), "box": np.tile([[0.2, 0.2, 0.6, 0.7]], (args.batch, 1)).astype(np.float32)}

    def steps(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            model.train_on_batch(x, y)
        return (time.perf_counter() - start) / n

    steps(3)  # trace and warm up
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="simple")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="training steps per timing")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"CPU bf16 flags: {', '.join(cpu_bf16_flags()) or 'none'}")
    runners = {policy: training_step(policy, args) for policy in ("float32", "mixed_bfloat16")}
    times = {policy: float("inf") for policy in runners}
    for _ in range(args.rounds):  # alternate, so a change in machine load hits both alike; keep the best
        for policy, steps in runners.items():
            times[policy] = min(times[policy], steps(args.steps))
    for policy, t in times.items():
        print(f"{policy:>15}: {t * 1000:7.1f} ms per training step ({args.backbone}, {args.size} px, batch {args.batch})")
    print(f"mixed_bfloat16 / float32 step time: {times['mixed_bfloat16'] / times['float32']:.2f}")


if __name__ == "__main__":
    main()
