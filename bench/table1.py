"""Table 1 of the paper, measured: one self-attention vs recurrent vs convolutional layer.

    python bench/table1.py [--lengths 16 64 256 1024] [--widths 64 256 512]
                           [--out bench/results/table1.json]

Table 1 gives the cost per layer as O(n²·d) for self-attention, O(n·d²) for a recurrent
layer and O(k·n·d²) for a convolution, so self-attention is the cheaper one while the
sequence length n is below the width d. Here each layer runs forward + backward (gradients
of inputs and weights) on a batch of `--batch` sequences `[n, d]`:

    self-attention  keras_transformer MultiHeadAttention, d/64 heads (at least 1), with the
                    Q/K/V/O projections: 4·n·d² + 2·n²·d multiply-adds
    recurrent       keras.layers.LSTM(d): 8·n·d² multiply-adds, n sequential steps
    convolution     keras.layers.Conv1D(d, kernel 3, same padding): 3·n·d² multiply-adds

Each time is the median of `--runs` calls after a warm-up call, in a tf.function (graph,
no XLA). The script writes JSON, prints a table, and plots time against n per width with the
measured crossover (where self-attention becomes slower than the LSTM) to a PNG.
"""

import argparse
import json
import math
import os
import statistics
import time

import keras
import tensorflow as tf

from keras_transformer.layers import MultiHeadAttention


def layers_for(width):
    heads = max(1, width // 64)
    attention = MultiHeadAttention(num_heads=heads, key_dim=width // heads)
    lstm = keras.layers.LSTM(width, return_sequences=True)
    conv = keras.layers.Conv1D(width, 3, padding="same")
    return {  # (layer holding the weights, its call)
        "self-attention": (attention, lambda x: attention(x, x)),
        "recurrent (LSTM)": (lstm, lstm),
        "convolution (k=3)": (conv, conv),
    }


def multiply_adds(kind, n, d):
    return {"self-attention": 4 * n * d * d + 2 * n * n * d,
            "recurrent (LSTM)": 8 * n * d * d,
            "convolution (k=3)": 3 * n * d * d}[kind]


def time_layer(layer, call, x, runs):
    """Median seconds of one forward + backward pass (gradients of input and weights)."""
    call(x)  # build the weights
    weights = list(layer.trainable_weights)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.cast(call(x), "float32"))
        return tape.gradient(loss, [x] + weights)

    step(x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        [g.numpy() for g in step(x)]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def crossover(lengths, attention, recurrent):
    """First n (log-interpolated) at which self-attention is slower than the LSTM, or None."""
    for i in range(1, len(lengths)):
        a0, a1 = attention[i - 1] / recurrent[i - 1], attention[i] / recurrent[i]
        if a0 < 1 <= a1:
            t = math.log(a0) / (math.log(a0) - math.log(a1))
            return round(lengths[i - 1] * (lengths[i] / lengths[i - 1]) ** t)
    return None


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = results["widths"]
    fig, axes = plt.subplots(1, len(widths), figsize=(4.2 * len(widths), 3.8), squeeze=False)
    for ax, width in zip(axes[0], widths):
        rows = results["times_ms"][str(width)]
        for kind, times in rows.items():
            ax.plot(results["lengths"], times, marker="o", label=kind)
        ax.axvline(width, color="gray", linestyle=":", label="n = d (Table 1)")
        cross = results["crossover_n"][str(width)]
        if cross:
            ax.axvline(cross, color="black", linestyle="--", label=f"measured crossover n≈{cross}")
        ax.set(xscale="log", yscale="log", xlabel="sequence length n", ylabel="ms (fwd + bwd)",
               title=f"d = {width}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default="bench/results/table1.json")
    args = parser.parse_args(argv)

    results = {"lengths": args.lengths, "widths": args.widths, "batch": args.batch,
               "times_ms": {}, "multiply_adds": {}, "crossover_n": {}}
    for width in args.widths:
        times, work = {}, {}
        for n in args.lengths:
            x = tf.random.normal((args.batch, n, width))
            for kind, (layer, call) in layers_for(width).items():
                ms = 1000 * time_layer(layer, call, x, args.runs)
                times.setdefault(kind, []).append(round(ms, 3))
                work.setdefault(kind, []).append(args.batch * multiply_adds(kind, n, width))
                print(f"d {width:5d} n {n:5d} {kind:18s} {ms:10.2f} ms", flush=True)
        results["times_ms"][str(width)] = times
        results["multiply_adds"][str(width)] = work
        results["crossover_n"][str(width)] = crossover(
            args.lengths, times["self-attention"], times["recurrent (LSTM)"])
        print(f"d {width}: self-attention slower than the LSTM from n ≈ "
              f"{results['crossover_n'][str(width)]}", flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    plot(results, os.path.splitext(args.out)[0] + ".png")


if __name__ == "__main__":
    main()
