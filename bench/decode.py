"""Decoding latency: cached XLA greedy / beam-4 vs keras-hub's samplers and a no-cache decoder.

    pip install -e ".[bench]"     # keras-hub, for the peer rows
    python bench/decode.py [--runs 5] [--out bench/results/decode.json]

Model: the "small" preset (3+3 layers, d 256, 4 heads, d_ff 1024, vocab 8000), random
weights with the eos embedding zeroed so every sentence decodes exactly the requested
number of new tokens; source length 16. The peer (bench/keras_hub_peer.py) is the same
size, built from keras-hub layers and decoded by keras-hub's GreedySampler / BeamSampler
under XLA. Every row is the median of `--runs` timed calls after a warm-up call (which
compiles). A second table times greedy decoding at batch 1 for growing output lengths to
show the per-token cost.
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import tensorflow as tf

import keras_transformer as kt
from keras_transformer import decoding
from keras_transformer.tokenizer import EOS_ID

NEW_TOKENS, SOURCE_LENGTH, VOCAB = 64, 16, 8000


def build_model():
    model = kt.Transformer(kt.TransformerConfig.from_preset("small", vocab_size=VOCAB))
    table = model.source_embedding.embeddings
    table.assign(tf.tensor_scatter_nd_update(table, [[EOS_ID]], tf.zeros([1, 256])))
    return model


def our_decoders(model, new_tokens, weights="float32"):
    """{name: compiled decoder}; `weights` of the cached ones ("float32" or "int8")."""
    extra = new_tokens - SOURCE_LENGTH  # budget = source length + extra = new_tokens
    return {
        "greedy, cached, XLA": tf.function(
            lambda s: decoding.greedy_decode(model, s, new_tokens, extra, weights=weights)[0],
            jit_compile=True),
        "beam 4, cached, XLA": tf.function(
            lambda s: decoding.beam_search(model, s, new_tokens, 4, 0.6, extra,
                                           weights=weights)[0],
            jit_compile=True),
        "greedy, no cache, graph": tf.function(
            lambda s: decoding.greedy_decode_uncached(model, s, new_tokens, extra)),
    }


def peer_decoders(new_tokens):
    """keras-hub rows, or {} when keras-hub is not installed."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        import keras_hub_peer
    except ImportError as error:
        print(f"keras-hub rows skipped: {error}", flush=True)
        return {}
    return keras_hub_peer.compiled_decoders(keras_hub_peer.KerasHubSeq2Seq(VOCAB), new_tokens)


def source_ids(batch):
    rng = np.random.default_rng(0)
    return tf.constant(rng.integers(4, VOCAB, (batch, SOURCE_LENGTH)), tf.int32)


def median_ms(fn, source, runs):
    fn(source)  # warm-up: trace and compile
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        np.asarray(fn(source))
        times.append(1000 * (time.perf_counter() - start))
    return round(statistics.median(times), 1), round(min(times), 1), round(max(times), 1)


def latency_table(model, runs):
    decoders = {**our_decoders(model, NEW_TOKENS), **peer_decoders(NEW_TOKENS)}
    rows = []
    for batch in (1, 16):
        for name, fn in decoders.items():
            median, low, high = median_ms(fn, source_ids(batch), runs)
            rows.append({"decoder": name, "batch": batch, "new_tokens": NEW_TOKENS,
                         "median_ms": median, "min_ms": low, "max_ms": high})
            print(f"{name:30s} batch {batch:2d}: {median:8.1f} ms (min {low}, max {high})",
                  flush=True)
    return rows


def per_token_table(model, runs):
    rows = []
    for new_tokens in (16, 32, 64, 128):
        fn = our_decoders(model, new_tokens)["greedy, cached, XLA"]
        median, _, _ = median_ms(fn, source_ids(1), runs)
        rows.append({"decoder": "greedy, cached, XLA", "batch": 1, "new_tokens": new_tokens,
                     "median_ms": median, "ms_per_token": round(median / new_tokens, 2)})
        print(f"greedy batch 1, {new_tokens:3d} tokens: {median:7.1f} ms, "
              f"{median / new_tokens:.2f} ms/token", flush=True)
    return rows


def ratios(rows):
    """Speed-ups of our cached decoders over each baseline, per batch size."""
    ms = {(r["decoder"], r["batch"]): r["median_ms"] for r in rows}
    pairs = {
        "greedy vs keras-hub GreedySampler": ("greedy, cached, XLA",
                                              "keras-hub GreedySampler, XLA"),
        "beam 4 vs keras-hub BeamSampler": ("beam 4, cached, XLA",
                                            "keras-hub BeamSampler 4, XLA"),
        "greedy vs no cache": ("greedy, cached, XLA", "greedy, no cache, graph"),
    }
    out = {}
    for label, (ours, peer) in pairs.items():
        for batch in (1, 16):
            if (peer, batch) in ms:
                out[f"{label}, batch {batch}"] = round(ms[peer, batch] / ms[ours, batch], 2)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "decode.json"))
    args = parser.parse_args()
    model = build_model()
    rows = latency_table(model, args.runs)
    speedups = ratios(rows)
    for label, value in speedups.items():
        print(f"{label}: {value}x")
    result = {"runs": args.runs, "source_length": SOURCE_LENGTH, "tensorflow": tf.__version__,
              "results": rows, "speedups": speedups,
              "per_token": per_token_table(model, args.runs)}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
