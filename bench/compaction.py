"""Batch compaction on real text: how much work a static batch wastes, and what it saves.

    python bench/compaction.py --run RUN [--stopping full exact] [--rounds 3]
                               [--out bench/results/compaction.json]

The run's model decodes the 1,000 test_2016_flickr sentences in process with its beam
size and α, batches of 32 sorted by length (as `keras-transformer translate --file`):

- settling: each sentence decoded alone, the loop step at which it settled (read from the
  loop's step counter; `decoding_loop._segments` is wrapped for that, nothing else
  changes). "static" is the sentence-steps the batches take when every sentence steps
  until its batch's last one settles, "needed" the sum of the sentences' own steps.
- timing: the whole test set with `compact=False` and no padding of the short last batch
  (the loop before compaction) against the default (`compact=True`, `translate_lines`
  padding the last batch to 32), interleaved for `--rounds` rounds after a first pass that
  compiles every shape (its seconds are reported too); the translations must be identical.
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
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from vs_ctranslate2 import cpu_info, write_results  # noqa: E402

from keras_transformer import decoding_loop  # noqa: E402
from keras_transformer.training import corpus  # noqa: E402
from keras_transformer.training.evaluate import load_run  # noqa: E402
from keras_transformer.translation import TextTranslator, translate_lines  # noqa: E402

BATCH = 32


def settle_steps(model, tokenizer, options, sources):
    """The step at which each sentence, decoded alone, settled."""
    last_step = tf.Variable(0)
    segments = decoding_loop._segments

    def recording(*args, **kwargs):
        state = segments(*args, **kwargs)
        last_step.assign(state[0])
        return state

    decoding_loop._segments = recording
    try:
        translator = TextTranslator(model, tokenizer, options)
        steps = []
        for sentence in sources:
            translator.translate([sentence])
            steps.append(int(last_step.numpy()))
        return steps
    finally:
        decoding_loop._segments = segments


def sentence_steps(steps, sources):
    """(static, needed) sentence-steps over batches of `BATCH` sorted by length."""
    order = np.argsort([len(s) for s in sources], kind="stable")
    batches = [np.array([steps[i] for i in order[start:start + BATCH]])
               for start in range(0, len(sources), BATCH)]
    return int(sum(BATCH * b.max() for b in batches)), int(sum(b.sum() for b in batches))


def translate_function(model, tokenizer, options, compact):
    translator = TextTranslator(model, tokenizer, options, compact=compact)
    return lambda batch: translator.translate(batch).numpy()


def unpadded_lines(translate, sources):
    """`translate_lines` as it was before it padded the short last batch."""
    order = np.argsort([len(s) for s in sources], kind="stable")
    out = [None] * len(sources)
    for start in range(0, len(sources), BATCH):
        chunk = order[start:start + BATCH]
        for index, text in zip(chunk, translate([sources[i] for i in chunk])):
            out[index] = text.decode("utf-8")
    return out


def timing(model, tokenizer, options, sources, rounds):
    variants = {
        "static loop, unpadded last batch": (
            translate_function(model, tokenizer, options, False), unpadded_lines),
        "compacted, padded last batch": (
            translate_function(model, tokenizer, options, True),
            lambda f, s: translate_lines(f, s, BATCH, verbose=0)),
    }
    first, seconds, outputs = {}, {name: [] for name in variants}, {}
    for name, (translate, lines) in variants.items():
        start = time.perf_counter()
        outputs[name] = lines(translate, sources)
        first[name] = round(time.perf_counter() - start, 2)
    for _ in range(rounds):
        for name, (translate, lines) in variants.items():
            start = time.perf_counter()
            lines(translate, sources)
            seconds[name].append(round(time.perf_counter() - start, 2))
    before, after = outputs.values()
    return dict(first_pass_seconds=first, seconds=seconds,
                median_seconds={n: statistics.median(s) for n, s in seconds.items()},
                identical_translations=sum(a == b for a, b in zip(before, after)))


def markdown(result):
    flags = ", ".join(name for name, on in result["cpu"]["flags"].items() if on)
    lines = [f"Batch compaction, {result['sentences']} test_2016_flickr sentences, beam "
             f"{result['beam_size']}, α {result['alpha']}, batches of {BATCH} "
             f"({result['cpu']['model']}, {result['cpu']['cores']} cores; {flags})", "",
             "| stopping | settle steps median / max | sentence-steps static / needed | "
             "seconds before / after | first pass before / after | identical |",
             "|---|---|---|---|---|---:|"]
    for stopping, row in result["stopping"].items():
        before, after = row["median_seconds"].values()
        first_before, first_after = row["first_pass_seconds"].values()
        lines.append(f"| {stopping} | {row['settle_median']:g} / {row['settle_max']} | "
                     f"{row['static_steps']:,} / {row['needed_steps']:,} | {before} / {after} "
                     f"| {first_before} / {first_after} | {row['identical_translations']} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished main-job run directory")
    parser.add_argument("--stopping", nargs="+", default=["full", "exact"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "compaction.json"))
    args = parser.parse_args(argv)
    config, model, tokenizer = load_run(args.run)
    sources = corpus.split_lines(config.data, "test")[0]
    evaluation = config.evaluation
    result = dict(run=args.run, cpu=cpu_info(), sentences=len(sources),
                  beam_size=evaluation.beam_size, alpha=evaluation.alpha, stopping={})
    for stopping in args.stopping:
        options = evaluation.decoding_options(stopping=stopping)
        steps = settle_steps(model, tokenizer, options, sources)
        static, needed = sentence_steps(steps, sources)
        row = dict(settle_median=statistics.median(steps), settle_max=max(steps),
                   static_steps=static, needed_steps=needed,
                   **timing(model, tokenizer, options, sources, args.rounds))
        result["stopping"][stopping] = row
        print(stopping, json.dumps(row), flush=True)
    write_results(result, args.out, markdown)


if __name__ == "__main__":
    main()
