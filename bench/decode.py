"""Decoding latency: cached XLA greedy / beam-4 vs a decoder without cache.

    python bench/decode.py [--runs 3] [--out bench/results/decode.json]

Model: the "small" preset (3+3 layers, d 256, vocab 8000), random weights with the eos
embedding zeroed so every sentence decodes exactly 64 new tokens. Source length 16.
Reports the median of `--runs` timed calls after a warm-up call (which compiles).
"""

import argparse
import json
import os
import statistics
import time

import numpy as np
import tensorflow as tf

import keras_transformer as kt
from keras_transformer import decoding
from keras_transformer.tokenizer import EOS_ID

NEW_TOKENS, SOURCE_LENGTH = 64, 16


def build_model():
    model = kt.Transformer(kt.TransformerConfig.from_preset("small", vocab_size=8000))
    table = model.source_embedding.embeddings
    table.assign(tf.tensor_scatter_nd_update(table, [[EOS_ID]], tf.zeros([1, 256])))
    return model


def median_seconds(fn, source, runs):
    fn(source)  # warm-up: trace and compile
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        ids = fn(source)
        np.asarray(ids)
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "decode.json"))
    args = parser.parse_args()
    model = build_model()
    extra = NEW_TOKENS - SOURCE_LENGTH  # budget = source length + extra = 64 tokens
    decoders = {
        "greedy, cached, XLA": tf.function(
            lambda s: decoding.greedy_decode(model, s, NEW_TOKENS, extra)[0], jit_compile=True),
        "beam 4, cached, XLA": tf.function(
            lambda s: decoding.beam_search(model, s, NEW_TOKENS, 4, 0.6, extra)[0],
            jit_compile=True),
        "greedy, no cache, graph": tf.function(
            lambda s: decoding.greedy_decode_uncached(model, s, NEW_TOKENS, extra)),
    }
    rows = []
    for batch in (1, 16):
        source = tf.constant(np.random.default_rng(0).integers(
            4, 8000, (batch, SOURCE_LENGTH)), tf.int32)
        for name, fn in decoders.items():
            median, low, high = median_seconds(fn, source, args.runs)
            rows.append({"decoder": name, "batch": batch, "new_tokens": NEW_TOKENS,
                         "median_ms": round(1000 * median, 1), "min_ms": round(1000 * low, 1),
                         "max_ms": round(1000 * high, 1)})
            print(f"{name:26s} batch {batch:2d}: {1000 * median:8.1f} ms "
                  f"(min {1000 * low:.1f}, max {1000 * high:.1f})", flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"runs": args.runs, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
