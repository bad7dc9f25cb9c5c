"""Edge models of a run: file size, LiteRT latency at batch 1, and BLEU next to the SavedModel.

    keras-transformer export --run RUN --format tflite --quantize {none,float16,int8} \\
        --out RUN/edge/model.{none,float16,int8}.tflite
    keras-transformer evaluate --run RUN --model RUN/edge/model.<q>.tflite   # each q
    keras-transformer evaluate --run RUN --model RUN/saved_model
    python bench/edge.py --run RUN [--sentences 50] [--threads 2]

Latency is the median over the first `--sentences` test sentences, one at a time (batch 1),
of the string-in/string-out `translate` (beam 4) and `greedy` signatures in the standalone
LiteRT interpreter; BLEU comes from the `bleu.test.<model>.json` files that `evaluate`
wrote. Results go to bench/results/edge.json.
"""

import argparse
import json
import os
import statistics
import time

import numpy as np

from keras_transformer.export import litert
from keras_transformer.training import corpus
from keras_transformer.training.config import load_config

VARIANTS = ("none", "float16", "int8")


def latency_ms(path, sentences, signature, threads):
    runner = litert.load_interpreter(path, threads).get_signature_runner(signature)
    runner(sentence=np.array([sentences[0]], dtype=object))  # warm-up: allocate tensors
    times = []
    for sentence in sentences:
        start = time.perf_counter()
        runner(sentence=np.array([sentence], dtype=object))
        times.append(1000 * (time.perf_counter() - start))
    return round(statistics.median(times), 1)


def read_bleu(run_dir, name):
    path = os.path.join(run_dir, f"bleu.test.{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)["bleu"]


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--sentences", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "edge.json"))
    args = parser.parse_args()
    config = load_config(os.path.join(args.run, "config.yaml"))
    sentences = corpus.split_lines(config.data, "test")[0][: args.sentences]
    rows = [{"model": "SavedModel (XLA, batch 1 not timed here)",
             "bleu": read_bleu(args.run, "saved_model")}]
    fp32_size = None
    for variant in VARIANTS:
        path = os.path.join(args.run, "edge", f"model.{variant}.tflite")
        if not os.path.exists(path):
            print(f"missing {path}; export it first (see --help)")
            continue
        litert.check_operators(path)
        size = os.path.getsize(path)
        fp32_size = fp32_size or size
        row = {"model": f"TFLite {variant}", "size_mib": round(size / 2**20, 1),
               "size_vs_fp32": round(size / fp32_size, 3),
               "beam4_ms": latency_ms(path, sentences, "translate", args.threads),
               "greedy_ms": latency_ms(path, sentences, "greedy", args.threads),
               "bleu": read_bleu(args.run, f"model.{variant}")}
        rows.append(row)
        print(row, flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"run": args.run, "sentences": len(sentences), "threads": args.threads,
                   "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
