"""Where a beam-search step's time goes: the decoding loop body taken apart.

XLA compiles the whole decoding loop into one program, so an op-by-op profiler sees one
op. This times the parts instead, each alone in its own compiled `tf.while_loop` of
`--steps` iterations over the same shapes the real loop has (batch x beam rows, a
self-attention cache of `--capacity` slots), and the whole `beam_search` beside them:

    decode_step       embedding, the decoder layers and the output projection
    decoder_layers    the decoder layers alone (self-attention over the cache of all
                      of a sentence's beams, cross-attention, feed-forward, layer norms)
    logits_matmul     the output projection alone ([rows, d] x [d, vocab])
    best_extensions   log-normaliser and the two top-ks over the logits
    ancestry          which beam's cache entries hold each hypothesis' history: the
                      table reordered by the chosen beams and turned into the
                      attention mask (the cache itself is never reordered)
    beam_search       the real decoder, `--steps` new tokens (eos can never win: its
                      embedding row is zero), per step

Model: the main-job shape (4+4 layers, d_model 128, 4 heads, d_ff 256, vocabulary 8,000)
with random weights, source length 16. Milliseconds per step, median of `--rounds`.

    python bench/step_profile.py [--batch 32] [--capacity 16 32 64] [--weights int8] [--out FILE]
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import tensorflow as tf

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import keras_transformer as kt  # noqa: E402
from keras_transformer import decoding, decoding_loop, quantization  # noqa: E402
from keras_transformer.decoding_options import WEIGHTS  # noqa: E402
from keras_transformer.layers.attention import visible_entries  # noqa: E402
from keras_transformer.tokenizer import EOS_ID  # noqa: E402
from keras_transformer.training.precision import cpu_flags  # noqa: E402

SHAPE = dict(num_encoder_layers=4, num_decoder_layers=4, d_model=128, num_heads=4, d_ff=256,
             vocab_size=8000)
SOURCE_LENGTH, BEAM = 16, 4
FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")


def build_model():
    config = kt.TransformerConfig.from_preset("small", **SHAPE)
    model = kt.Transformer(config)
    table = model.source_embedding.embeddings
    zero = tf.zeros([1, config.d_model])
    table.assign(tf.tensor_scatter_nd_update(table, [[EOS_ID]], zero))
    return model


def source_ids(batch):
    """Random source token ids `[batch, SOURCE_LENGTH]` (seed 0), the parts' input."""
    return tf.constant(np.random.default_rng(0).integers(
        4, SHAPE["vocab_size"], (batch, SOURCE_LENGTH)), tf.int32)


def _loop(steps, body, state):
    return tf.while_loop(lambda t, *rest: t < steps, body, (tf.constant(0), *state))


def variants(model, batch, capacity, steps, weights="float32"):
    """{name: compiled function of the source ids}: each runs `steps` loop iterations."""
    rows, vocab = batch * BEAM, SHAPE["vocab_size"]
    kernels = model.step_kernels(weights)

    def setup(source):
        memory, mask = model.encode(source, training=False)
        return model.init_cache(memory, capacity, beam_size=BEAM), mask

    # Beam j continues beam (j + 1) % BEAM's history at every slot: a mask as busy as any.
    ancestry = tf.tile(((tf.range(BEAM) + 1) % BEAM)[None, :, None], [batch, 1, capacity])

    def decode_step(source):
        cache, mask = setup(source)

        def body(t, cache, total):
            ids = tf.fill([rows], 4 + t)
            logits, cache = model.decode_step(ids, t % capacity, cache, mask, kernels, ancestry)
            return t + 1, cache, total + logits[0, 0]
        return _loop(steps, body, (cache, 0.0))[-1]

    def decoder_layers(source):
        cache, mask = setup(source)
        x = tf.random.stateless_normal([rows, 1, SHAPE["d_model"]], (1, 2))

        def body(t, cache, x):
            y, cache, _ = model.decoder.step(x, cache, t % capacity, mask, kernels["decoder"],
                                             visible_entries(ancestry, t % capacity))
            return t + 1, cache, y
        return _loop(steps, body, (cache, x))[-1]

    def logits_matmul(source):
        x = tf.random.stateless_normal([rows, SHAPE["d_model"]], (1, 2))

        def body(t, x):
            logits = quantization.matmul(x, kernels["logits"])
            return t + 1, x + logits[:, :SHAPE["d_model"]] * 1e-30
        return _loop(steps, body, (x,))[-1]

    def best_extensions(source):
        logits = tf.random.stateless_normal([rows, vocab], (1, 2))
        limits = tf.fill([batch], steps + 10)

        def body(t, scores):
            shifted = logits + tf.cast(t, tf.float32) * 1e-3
            top, _, _ = decoding._best_extensions(shifted, scores, t, limits, BEAM)
            return t + 1, top[:, :BEAM]
        return _loop(steps, body, (tf.zeros([batch, BEAM]),))[-1]

    def ancestry_mask(source):
        def body(t, table, total):
            table = decoding._write(table, t % capacity, tf.range(BEAM)[None, :])
            visible = visible_entries(table, t % capacity)
            order = tf.reshape((tf.range(batch * BEAM) + t) % BEAM, [batch, BEAM])
            table = tf.gather(table, order, batch_dims=1)
            return t + 1, table, total + tf.reduce_sum(tf.cast(visible, tf.int32))
        return _loop(steps, body, (ancestry, 0))[-1]

    def beam_search(source):
        return decoding.beam_search(model, source, steps, BEAM, 0.6, steps - SOURCE_LENGTH,
                                    weights=weights)[0]

    parts = dict(decode_step=decode_step, decoder_layers=decoder_layers,
                 logits_matmul=logits_matmul, best_extensions=best_extensions,
                 ancestry=ancestry_mask)
    if capacity == min(steps, decoding_loop.FIRST_SEGMENT):  # beam_search's own first segment
        parts["beam_search"] = beam_search
    return {name: tf.function(fn, jit_compile=True) for name, fn in parts.items()}


def median_ms_per_step(fn, source, steps, rounds):
    fn(source)  # trace and compile
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        np.asarray(fn(source))
        times.append((time.perf_counter() - start) * 1e3 / steps)
    return round(statistics.median(times), 3)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="sentences (rows = batch x 4)")
    parser.add_argument("--capacity", type=int, nargs="+", default=[32],
                        help="self-attention cache slots")
    parser.add_argument("--steps", type=int, default=32, help="loop iterations per call")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--weights", default="float32", choices=WEIGHTS,
                        help="the step's dense products: float32 or int8 (DecodingOptions)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "step_profile.json"))
    args = parser.parse_args(argv)

    flags = cpu_flags()
    model = build_model()
    source = source_ids(args.batch)
    rows = []
    for capacity in args.capacity:
        for name, fn in variants(model, args.batch, capacity, args.steps, args.weights).items():
            ms = median_ms_per_step(fn, source, args.steps, args.rounds)
            rows.append(dict(part=name, capacity=capacity, ms_per_step=ms))
            print(f"capacity {capacity:3d}  {name:16s} {ms:8.3f} ms/step", flush=True)
    result = dict(model=SHAPE, weights=args.weights, batch=args.batch, beam=BEAM,
                  rows_per_step=args.batch * BEAM,
                  steps=args.steps, rounds=args.rounds, source_length=SOURCE_LENGTH,
                  tensorflow=tf.__version__, cpu_flags={f: f in flags for f in FLAGS},
                  cores=os.cpu_count(), rows=rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
