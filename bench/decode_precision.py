"""Our decoder in float32 and bfloat16, XLA-compiled and in graph mode (issue 17's bf16 lever).

    python bench/decode_precision.py [--settings float32:xla bfloat16:graph ...]
                                     [--out bench/results/decode_precision.json]

The fixed-length cells of `bench/vs_ctranslate2.py` (bench/decode.py's `small` model with
random weights and the eos embedding zeroed, source length 16, exactly 64 decoder steps;
greedy and beam 4 at batch 1 and 32), decoded by `decoding.greedy_decode` /
`decoding.beam_search` on `Transformer.with_dtype(policy)` copies of one model, in a
`tf.function` with and without `jit_compile`. ms, median of 15 calls after a warm-up call
(`decode.median_ms`, min and max in the JSON); each output is checked to end at step 64.
The CPU flags are written beside the figures: bf16 only has a chance on CPUs with bf16
units (avx512_bf16 / amx_bf16).
"""

import argparse
import json
import os
import sys

import tensorflow as tf

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import decode  # noqa: E402
from keras_transformer import decoding  # noqa: E402
from keras_transformer.tokenizer import EOS_ID  # noqa: E402
from keras_transformer.training.precision import cpu_flags  # noqa: E402

STEPS, SOURCE_LENGTH, RUNS = decode.NEW_TOKENS, decode.SOURCE_LENGTH, 15
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")
SETTINGS = ("float32:xla", "float32:graph", "bfloat16:xla", "bfloat16:graph")


def decoders(model, jit):
    extra = STEPS - SOURCE_LENGTH  # budget = source length + extra = 64 steps
    return {
        1: tf.function(lambda s: decoding.greedy_decode(model, s, STEPS, extra)[0],
                       jit_compile=jit),
        4: tf.function(lambda s: decoding.beam_search(model, s, STEPS, 4, 0.6, extra)[0],
                       jit_compile=jit),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS),
                        help="policy:mode pairs, mode xla or graph")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "decode_precision.json"))
    args = parser.parse_args()
    flags = cpu_flags()
    base = decode.build_model()
    rows = []
    for setting in args.settings:
        policy, mode = setting.split(":")
        for beam, decoder in decoders(base.with_dtype(policy), mode == "xla").items():
            for batch in (1, 32):
                ids = decode.source_ids(batch)  # the same ids as bench/decode.py's cells
                out = decoder(ids).numpy()
                ends = {list(row).index(EOS_ID) if EOS_ID in row else -1 for row in out}
                if ends != {STEPS - 1}:
                    raise RuntimeError(f"{setting} beam {beam}: eos at {ends}, not {STEPS - 1}")
                ms, low, high = decode.median_ms(decoder, ids, RUNS)
                row = dict(setting=setting, batch=batch, beam=beam, ms=ms, min=low, max=high)
                print(json.dumps(row), flush=True)
                rows.append(row)
    with open(args.out, "w") as f:
        json.dump(dict(cpu_flags={k: k in flags for k in FLAGS}, steps=STEPS,
                       source_length=SOURCE_LENGTH, rows=rows), f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
