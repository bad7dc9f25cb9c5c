"""What the output-length limit costs beam search: `max_extra_length` on the validation split.

    python bench/extra_length.py --run RUN [--max-extra-length 50 30 20] [--rounds 2]
                                 [--out bench/results/extra_length.json]

A translation may run to its source length + `max_extra_length` tokens. With the exact
stopping rule (`decoding.beam_search`) a sentence settles once no live beam can beat its
best finished hypothesis, and a live beam's bound is its score over the length penalty at
that limit: a looser limit keeps beams alive for longer. This decodes the run's `valid`
split (never the test set) in process with the run's beam, α and stopping rule, batches of
32 sorted by length, two at a time (`translate_lines`' default), for each limit: a first
pass that compiles every shape, then the fastest of `--rounds` timed passes (settings
interleaved). It also reports cased sacreBLEU and how many translations differ from the
first limit's, and, from the training split, how far the references run past their sources
in pieces (the limit a translation would need to match its reference's length).
"""

import argparse
import gzip
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from vs_ctranslate2 import cpu_info, write_results  # noqa: E402

from keras_transformer.training import corpus  # noqa: E402
from keras_transformer.training.evaluate import bleu, load_run  # noqa: E402
from keras_transformer.training.streaming import multi30k_paths  # noqa: E402
from keras_transformer.translation import TextTranslator, translate_lines  # noqa: E402

BATCH = 32


def overshoot(tokenizer, config):
    """Percentiles of (reference pieces - source pieces) over the training split."""
    data = config.data
    sides = []
    for path in multi30k_paths("train", data.source_lang, data.target_lang):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = [line.strip() for line in f]
        sides.append(np.array([int(n) for n in tokenizer.tokenize(lines).row_lengths()]))
    extra = sides[1] - sides[0]
    return {f"p{q}": float(np.percentile(extra, q)) for q in (50, 99, 99.9, 100)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--max-extra-length", type=int, nargs="+", default=[50, 30, 20])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "extra_length.json"))
    args = parser.parse_args()
    config, model, tokenizer = load_run(args.run)
    sources, references = corpus.split_lines(config.data, "valid")
    translators = {extra: TextTranslator(model, tokenizer, config.evaluation.decoding_options(
        max_extra_length=extra)) for extra in args.max_extra_length}
    translate = {extra: lambda b, t=t: t.translate(b).numpy() for extra, t in translators.items()}
    hypotheses, seconds = {}, {extra: [] for extra in translators}
    for extra in translators:  # first passes: every shape compiled
        hypotheses[extra] = translate_lines(translate[extra], sources, BATCH, verbose=0)
    for _ in range(args.rounds):
        for extra in translators:
            start = time.perf_counter()
            translate_lines(translate[extra], sources, BATCH, verbose=0)
            seconds[extra].append(round(time.perf_counter() - start, 2))
            print(f"max_extra_length {extra}: {seconds[extra][-1]} s", flush=True)
    first = args.max_extra_length[0]
    rows = [dict(max_extra_length=extra, seconds=min(seconds[extra]), passes=seconds[extra],
                 bleu=round(bleu(hypotheses[extra], references)[0].score, 2),
                 differ_from_first=sum(a != b for a, b in zip(hypotheses[extra],
                                                              hypotheses[first])))
            for extra in translators]
    evaluation = config.evaluation
    results = dict(cpu=cpu_info(), run=args.run, split="valid", sentences=len(sources),
                   beam=evaluation.beam_size, alpha=evaluation.alpha,
                   stopping=evaluation.stopping, batch=BATCH,
                   train_reference_extra_pieces=overshoot(tokenizer, config), rows=rows)
    write_results(results, args.out, markdown)


def markdown(results):
    most = results["train_reference_extra_pieces"]["p100"]
    lines = [f"{results['sentences']} {results['split']} sentences, beam {results['beam']}, "
             f"α {results['alpha']}, stopping {results['stopping']}; training references run "
             f"past their sources by at most {most:.0f} pieces.", "",
             "| max extra length | seconds | val BLEU | translations changed |",
             "|---:|---:|---:|---:|"]
    lines += [f"| {r['max_extra_length']} | {r['seconds']:.2f} | {r['bleu']:.2f} "
              f"| {r['differ_from_first']} |" for r in results["rows"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
