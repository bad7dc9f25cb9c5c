"""What TensorFlow's CPU allocator costs the main job: malloc against the BFC pool.

The CLI sets TF_CPU_ALLOCATOR_USE_BFC=true (keras_transformer/cli.py). This trains the
main job's model (`training/configs/multi30k_en_de.yaml`) for 4 epochs of 60 steps twice,
in fresh processes, once with TensorFlow's default allocator (malloc) and once with its
BFC pool, and compares the steady epochs (2-4: epoch 1 traces and compiles; each epoch
includes its validation pass), and over each whole process (vocabulary, counting pass and
compiles included, the same in both) the minor page faults and the kernel (system) CPU
time, and the losses.

    python bench/allocator.py        # ~10 min; writes bench/results/allocator.json
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
STEPS, EPOCHS = 60, 4


def probe_config(base, path):
    """The base config cut to EPOCHS epochs of STEPS steps (no budget, no averaging)."""
    values = yaml.safe_load(open(base))
    values["training"].update(
        steps_per_epoch=STEPS, max_steps=STEPS * EPOCHS, time_budget_minutes=None,
        average_last=0, checkpoint_every=10 ** 6,
        decay="inverse_sqrt")  # a cosine needs more steps than the warm-up
    with open(path, "w") as f:
        yaml.safe_dump(values, f)


def run(config, out, use_bfc):
    """Train in a fresh process; its epoch times, faults, CPU seconds and losses."""
    env = dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC="true" if use_bfc else "false")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "keras_transformer.cli", "train", "--config", config,
                    "--out", out, "--no-evaluate", "--no-export", "--verbose", "0"],
                   env=env, check=True, cwd=REPO)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = json.load(open(os.path.join(out, "summary.json")))
    steady = summary["epoch_seconds"][1:]
    return {
        "allocator": "bfc" if use_bfc else "malloc",
        "steady_ms_per_step": round(1000 * statistics.median(steady) / STEPS, 1),
        "epoch_seconds": summary["epoch_seconds"],
        "minor_page_faults": after.ru_minflt - before.ru_minflt,
        "user_cpu_seconds": round(after.ru_utime - before.ru_utime, 1),
        "system_cpu_seconds": round(after.ru_stime - before.ru_stime, 1),
        "wall_seconds": round(wall, 1),
        "peak_memory_mb": summary["peak_memory_mb"]["train"],
        "loss": summary["history"]["loss"],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(REPO, "training", "configs",
                                                         "multi30k_en_de.yaml"))
    parser.add_argument("--out", default=os.path.join(HERE, "results", "allocator.json"))
    args = parser.parse_args(argv)
    from keras_transformer.training.precision import cpu_flags

    work = tempfile.mkdtemp(prefix="kt_alloc_")
    config = os.path.join(work, "probe.yaml")
    probe_config(args.config, config)
    rows = []
    for use_bfc in (False, True):
        rows.append(run(config, os.path.join(work, f"run_{use_bfc}"), use_bfc))
        row = rows[-1]
        print(f"{row['allocator']:>6}: {row['steady_ms_per_step']} ms a step, "
              f"{row['minor_page_faults']:,} page faults, "
              f"{row['system_cpu_seconds']} s system CPU, peak {row['peak_memory_mb']} MB",
              flush=True)
    malloc, bfc = rows
    result = {
        "command": "python bench/allocator.py", "config": args.config,
        "steps": f"{EPOCHS} epochs x {STEPS} steps, epochs 2-{EPOCHS} timed",
        "cpu_vector_flags": sorted(f for f in cpu_flags() if f.startswith(("avx", "amx"))),
        "cpu_count": os.cpu_count(), "rows": rows,
        "malloc_over_bfc_step_time": round(malloc["steady_ms_per_step"]
                                           / bfc["steady_ms_per_step"], 2),
        "largest_loss_difference": max(abs(a - b) for a, b in zip(malloc["loss"], bfc["loss"])),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"malloc / BFC step time: {result['malloc_over_bfc_step_time']}x, losses differ by "
          f"{result['largest_loss_difference']:.2g} at most; wrote {args.out}")


if __name__ == "__main__":
    main()
