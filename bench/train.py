"""Training throughput and model-FLOPs utilisation: ours vs a keras-hub seq2seq of the same size.

    pip install -e ".[bench]"
    python bench/train.py [--sizes small base] [--precisions float32 mixed_bfloat16]
                          [--xla off on] [--windows 3] [--out bench/results/train.json]

Workloads (fixed shapes, every token real, random ids):
    small: 3+3 layers, d 256, 4 heads, d_ff 1024, vocab 8000,  batch 64 x (32 source, 32 target)
    base:  6+6 layers, d 512, 8 heads, d_ff 2048, vocab 32000, batch 16 x (32 source, 32 target)

Both models train with `model.fit` and Adam. Ours is the project's recipe (label-smoothed
masked cross-entropy, the paper's learning-rate schedule, masked accuracy). The peer
(bench/keras_hub_peer.py) is keras-hub's TransformerEncoder/TransformerDecoder with
`SparseCategoricalCrossentropy(from_logits=True)` and accuracy, as in keras-hub's examples.
After warm-up steps (tracing, XLA compilation; 3 for small, 2 for base) each configuration
runs `--windows` windows of steps (4 for small, 2 for base, a few seconds each); the figure
is the median window's target tokens/s, the spread is min–max. The fp32 and bf16 matmul
peaks (tf.matmul 2048², median of 20) are measured in the same run; MFU = model FLOP/s
(3 x forward matmul FLOPs, `training_flops`) / peak of the configuration's compute dtype.
"""

import argparse
import gc
import json
import os
import statistics
import sys
import time

import keras
import numpy as np
import tensorflow as tf

import keras_transformer as kt
from keras_transformer.losses import MaskedAccuracy, MaskedCrossEntropy
from keras_transformer.schedules import paper_optimizer

WORKLOADS = {
    "small": dict(preset="small", vocab=8000, batch=64, source_len=32, target_len=32,
                  warmup=3, steps=4),
    "base": dict(preset="base", vocab=32000, batch=16, source_len=32, target_len=32,
                 warmup=2, steps=2),
}


def matmul_peak(dtype, size=2048, runs=20):
    """Median FLOP/s of a `size`² x `size`² tf.matmul in `dtype`."""
    a = tf.random.normal((size, size), dtype="float32")
    a, b = tf.cast(a, dtype), tf.cast(tf.transpose(a), dtype)
    matmul = tf.function(lambda x, y: tf.reduce_sum(tf.cast(tf.matmul(x, y)[:1, :1], "float32")))
    matmul(a, b)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        matmul(a, b).numpy()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)


def training_flops(config, batch, source_len, target_len):
    """Matmul FLOPs of one training step: 3 x forward (the backward pass costs ~2 forwards)."""
    d, f, vocab = config.d_model, config.d_ff, config.output_vocab_size
    n, m = source_len, target_len
    encoder = n * (4 * d * d + 2 * n * d + 2 * d * f)  # projections, QK^T and AV, FFN
    decoder = (m * (4 * d * d + 2 * m * d + 2 * d * f)  # self-attention and FFN
               + m * (2 * d * d + 2 * n * d) + n * 2 * d * d)  # cross: Q, O; K, V of memory
    macs = (config.num_encoder_layers * encoder + config.num_decoder_layers * decoder
            + m * d * vocab)  # output projection
    return 3 * 2 * macs * batch


def random_batches(vocab, batch, source_len, target_len, seed=0):
    """One fixed batch of ids in [4, vocab) repeated: no padding, no input cost."""
    rng = np.random.default_rng(seed)
    source = rng.integers(4, vocab, (batch, source_len), dtype=np.int32)
    target = rng.integers(4, vocab, (batch, target_len + 1), dtype=np.int32)
    return source, target[:, :-1], target[:, 1:]


def build_ours(workload, precision, xla):
    config = kt.TransformerConfig.from_preset(workload["preset"], vocab_size=workload["vocab"])
    model = kt.Transformer(config, dtype=None if precision == "float32" else precision)
    model.compile(optimizer=paper_optimizer(config.d_model, 4000),
                  loss=MaskedCrossEntropy(config.label_smoothing), metrics=[MaskedAccuracy()],
                  jit_compile=xla)
    return model, config


def build_peer(workload, precision, xla):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import keras_hub_peer

    config = kt.TransformerConfig.from_preset(workload["preset"], vocab_size=workload["vocab"])
    keras.mixed_precision.set_dtype_policy(precision)
    try:
        model = keras_hub_peer.training_model(config, max_len=128)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    model.compile(optimizer=keras.optimizers.Adam(1e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=xla)
    # As Transformer.compile does: slots made now, so the first step is traced once
    # (warm-up time only; the measured steps are the same either way).
    model.optimizer.build(model.trainable_variables)
    return model, config


class StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


def measure(builder, workload, precision, xla, warmup, steps, windows):
    keras.backend.clear_session()
    gc.collect()
    model, config = builder(workload, precision, xla)
    source, target_in, target_out = random_batches(
        workload["vocab"], workload["batch"], workload["source_len"], workload["target_len"])
    data = tf.data.Dataset.from_tensors(((source, target_in), target_out)).repeat()
    timer = StepTimer()
    started = time.perf_counter()
    model.fit(data, steps_per_epoch=warmup + steps * windows, epochs=1, verbose=0,
              callbacks=[timer])
    total = time.perf_counter() - started
    tokens = workload["batch"] * workload["target_len"]
    rates = []
    for w in range(windows):
        first = warmup + w * steps - 1  # end of the step before the window
        seconds = timer.ends[first + steps] - timer.ends[first]
        rates.append(tokens * steps / seconds)
    flops = training_flops(config, workload["batch"], workload["source_len"],
                           workload["target_len"])
    tokens_per_second = statistics.median(rates)
    return {
        "tokens_per_second": round(tokens_per_second, 1),
        "spread": [round(min(rates), 1), round(max(rates), 1)],
        "step_ms": round(1000 * tokens / tokens_per_second, 1),
        "flop_per_second": flops * tokens_per_second / tokens,
        "parameters": model.count_params(),
        "seconds_with_warmup": round(total, 1),
    }


def markdown(results):
    lines = ["| workload | precision | XLA | ours tok/s | keras-hub tok/s | ours / keras-hub "
             "| ours MFU | keras-hub MFU |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for row in results["rows"]:
        ours, peer = row.get("ours"), row.get("keras_hub")
        ratio = (f"{ours['tokens_per_second'] / peer['tokens_per_second']:.2f}x"
                 if ours and peer else "–")

        def cell(r, key, fmt):
            return fmt.format(r[key]) if r else "–"

        lines.append(
            f"| {row['workload']} | {row['precision']} | {row['xla']} "
            f"| {cell(ours, 'tokens_per_second', '{:,.0f}')} "
            f"| {cell(peer, 'tokens_per_second', '{:,.0f}')} | {ratio} "
            f"| {cell(ours, 'mfu', '{:.0%}')} | {cell(peer, 'mfu', '{:.0%}')} |")
    return "\n".join(lines)


def plot(results, path):
    """Grouped bars: tokens/s of ours and keras-hub per configuration, min–max as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    labels = [f"{r['workload']}\n{r['precision'].replace('mixed_', '')}\nXLA {r['xla']}"
              for r in rows]
    fig, ax = plt.subplots(figsize=(1.3 * len(rows) + 2, 4))
    for offset, name, label in ((-0.2, "ours", "keras-transformer"),
                                (0.2, "keras_hub", "keras-hub")):
        present = [(i, r[name]) for i, r in enumerate(rows) if name in r]
        values = [m["tokens_per_second"] for _, m in present]
        errors = [[v - m["spread"][0] for v, (_, m) in zip(values, present)],
                  [m["spread"][1] - v for v, (_, m) in zip(values, present)]]
        ax.bar([i + offset for i, _ in present], values, width=0.4, yerr=errors, capsize=3,
               label=label)
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel("target tokens / s (model.fit)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("Training throughput, median of windows (bars: min–max)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"],
                        choices=["float32", "mixed_bfloat16"])
    parser.add_argument("--xla", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--models", nargs="+", default=["ours", "keras_hub"],
                        choices=["ours", "keras_hub"])
    parser.add_argument("--warmup", type=int, help="warm-up steps (default: per workload)")
    parser.add_argument("--steps", type=int, help="steps per window (default: per workload)")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--out", default="bench/results/train.json")
    args = parser.parse_args(argv)

    peaks = {"float32": matmul_peak("float32"), "mixed_bfloat16": matmul_peak("bfloat16")}
    print(f"matmul peak: fp32 {peaks['float32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peaks['mixed_bfloat16'] / 1e9:.0f} GFLOP/s", flush=True)
    builders = {"ours": build_ours, "keras_hub": build_peer}
    rows = []
    for size in args.sizes:
        for precision in args.precisions:
            for xla in args.xla:
                row = {"workload": size, "precision": precision, "xla": xla}
                for name in args.models:
                    try:
                        workload = WORKLOADS[size]
                        result = measure(builders[name], workload, precision, xla == "on",
                                         args.warmup or workload["warmup"],
                                         args.steps or workload["steps"], args.windows)
                    except ImportError as error:
                        print(f"{name} skipped: {error}", flush=True)
                        continue
                    result["mfu"] = round(result["flop_per_second"] / peaks[precision], 3)
                    row[name] = result
                    print(f"{size:5s} {precision:14s} XLA {xla:3s} {name:9s} "
                          f"{result['tokens_per_second']:8,.0f} tok/s "
                          f"(spread {result['spread'][0]:,.0f}–{result['spread'][1]:,.0f}) "
                          f"MFU {result['mfu']:.0%}", flush=True)
                rows.append(row)
    results = {
        "matmul_peak_gflops": {k: round(v / 1e9, 1) for k, v in peaks.items()},
        "workloads": WORKLOADS, "windows": args.windows, "rows": rows,
    }
    print(markdown(results))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    plot(results, os.path.splitext(args.out)[0] + ".png")


if __name__ == "__main__":
    main()
