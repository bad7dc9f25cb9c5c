"""Does the input pipeline keep up with training? Target tokens/s of the tf.data stream alone.

    python bench/input_pipeline.py --run runs/multi30k_en_de [--passes 3]

Builds the run's training stream exactly as `train` does (its config and tokenizer: shuffle,
bucketing, token budget, endless repeat), iterates it without a model and reports non-pad
target tokens/s per pass: the first pass tokenizes and fills the cache, later passes read
the cache. Compare with `target_tokens_per_second` in the run's summary.json (what one
training step consumes): the pipeline runs in parallel with the step (prefetch), so it
never makes the step wait while its own rate is well above the step's.
"""

import argparse
import json
import os
import statistics
import time

import tensorflow as tf

from keras_transformer.tokenizer import SubwordTokenizer
from keras_transformer.training import corpus
from keras_transformer.training.config import load_config
from keras_transformer.training.data import epoch_size, make_batches


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a training run directory")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--out", default="bench/results/input_pipeline.json")
    args = parser.parse_args(argv)
    config = load_config(os.path.join(args.run, "config.yaml"))
    tokenizer = SubwordTokenizer.load(os.path.join(args.run, "tokenizer.model"))
    batches = dict(tokenizer=tokenizer, batch_tokens=config.training.batch_tokens,
                   max_length=config.data.max_length)
    # The same streamed train split as `train` reads (training/train.py).
    steps, tokens = epoch_size(make_batches(corpus.split_pairs(config.data, "train"),
                                            cache=False, **batches))
    stream = make_batches(corpus.split_pairs(config.data, "train", seed=config.training.seed),
                          shuffle_buffer=config.training.shuffle_buffer,
                          seed=config.training.seed, repeat=True,
                          cache=corpus.cache_tokens(config.data), **batches)
    iterator = iter(stream)
    rates = []
    for _ in range(args.passes):
        started, counted = time.perf_counter(), 0
        for _ in range(steps):
            _, target_out = next(iterator)
            counted += int(tf.math.count_nonzero(target_out))
        rates.append(counted / (time.perf_counter() - started))
    result = {"run": args.run, "steps_per_epoch": steps, "target_tokens_per_epoch": tokens,
              "tokens_per_second_by_pass": [round(r) for r in rates],
              "tokens_per_second_cached": round(statistics.median(rates[1:] or rates))}
    summary_path = os.path.join(args.run, "summary.json")
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            step_rate = json.load(f).get("target_tokens_per_second")
        if step_rate:
            result["training_tokens_per_second"] = step_rate
            result["pipeline_over_training"] = round(result["tokens_per_second_cached"]
                                                     / step_rate, 1)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
