"""Decoding-side recipe search on the validation split: checkpoints averaged, beam, α,
when beam search stops, how many tokens past the source length a translation may run, the
decoding steps' weights (float32 or int8).

    python -m keras_transformer.training.decoding_sweep --run runs/multi30k_en_de \
        --average 1 5 10 --beam 4 6 --alpha 0.6 1.0 \
        --out training/results/sweep/decoding

A trained run keeps every checkpoint, so how many to average (§6.1) and how to search
(§6.1: beam 4, α 0.6) can be chosen after training without training again. For each K
the model is the mean of the run's last K checkpoints (K=1: the last alone); every
(beam, α, stopping, max extra length, weights) then translates the validation split (never the test
set) and is scored with sacreBLEU. Rows go to `OUT.results.jsonl` and a table with the command to
`OUT.results.md`. Decoding seconds are wall time (XLA compilations
included) with whatever else runs: a cost hint, not a benchmark.
"""

import argparse
import itertools
import json
import os
import shlex
import sys
import time

from keras_transformer.decoding_options import STOPPING, WEIGHTS
from keras_transformer.translation import TextTranslator, translate_lines
from keras_transformer.training import corpus
from keras_transformer.training.averaging import average_checkpoints, list_checkpoints
from keras_transformer.training.config import RunError
from keras_transformer.training.evaluate import bleu, load_run, other_scores


def sweep(run_dir, averages, beams, alphas, split="valid", limit=None, stoppings=("exact",),
          extra_lengths=None, weights=("float32",)):
    """Yield one row (dict) per (K, beam, α, stopping, max_extra_length, weights); K counts
    the run's last checkpoints; `extra_lengths` None: the run's config's alone.

    A row holds the scores and the `hypotheses` themselves (`main` writes all but those).
    """
    if split == "test":
        raise RunError("the decoding sweep tunes on the validation split, not the test set")
    paths = list_checkpoints(os.path.join(run_dir, "checkpoints"))
    too_many = [k for k in averages if not 1 <= k <= len(paths)]
    if too_many:
        raise RunError(f"--average {too_many[0]}: {run_dir} has {len(paths)} checkpoints")
    config, model, tokenizer = load_run(run_dir, checkpoint="latest")
    extra_lengths = extra_lengths or [config.evaluation.max_extra_length]
    translators = {(stopping, extra, w): TextTranslator(
                       model, tokenizer, config.evaluation.decoding_options(
                           stopping=stopping, max_extra_length=extra, weights=w))
                   for stopping, extra, w in itertools.product(stoppings, extra_lengths, weights)}
    sources, references = corpus.split_lines(config.data, split)
    if limit:
        sources, references = sources[:limit], references[:limit]
    for k in averages:
        average_checkpoints(model, paths[-k:])  # the compiled decoders read these variables
        for beam in beams:
            for alpha, (stopping, extra, w) in itertools.product(alphas, translators):
                def translate(batch, beam=beam, alpha=alpha,
                              translator=translators[stopping, extra, w]):
                    return translator.translate(batch, beam, alpha).numpy()

                started = time.perf_counter()
                hypotheses = translate_lines(translate, sources,
                                             config.evaluation.batch_size, verbose=0)
                seconds = time.perf_counter() - started
                result, _ = bleu(hypotheses, references)
                yield {"average": k, "checkpoints": [os.path.basename(p) for p in paths[-k:]],
                       "beam": beam, "alpha": alpha, "stopping": stopping,
                       "max_extra_length": extra, "weights": w, "split": split,
                       "sentences": len(sources), "bleu": round(result.score, 2),
                       **other_scores(hypotheses, references),
                       "decode_seconds": round(seconds, 1), "hypotheses": hypotheses}


def write_table(rows, path, command):
    best = max(rows, key=lambda r: r["bleu"])
    lines = ["| checkpoints averaged | beam | α | stopping | max extra length | weights "
             "| val BLEU | lowercased | decode s |", "|---:|---:|---:|---|---:|---|---:|---:|---:|"]
    for r in rows:
        mark = "**" if r is best else ""
        lines.append(f"| {r['average']} | {r['beam']} | {r['alpha']} | {r['stopping']} | "
                     f"{r['max_extra_length']} | {r.get('weights', 'float32')} | "
                     f"{mark}{r['bleu']:.2f}{mark} | "
                     f"{r['bleu_lowercase']:.2f} | {r['decode_seconds']:.1f} |")
    lines += ["", f"Command: `{command}` ({rows[0]['sentences']} {rows[0]['split']} "
                  f"sentences, cased sacreBLEU 13a)."]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished training run directory")
    parser.add_argument("--average", type=int, nargs="+", default=[1, 5],
                        help="numbers of last checkpoints to average")
    parser.add_argument("--beam", type=int, nargs="+", default=[4])
    parser.add_argument("--alpha", type=float, nargs="+", default=[0.6])
    parser.add_argument("--stopping", nargs="+", default=["exact"], choices=STOPPING,
                        help="when beam search stops a sentence (DecodingOptions.stopping)")
    parser.add_argument("--max-extra-length", type=int, nargs="+",
                        help="tokens past the source length a translation may run "
                             "(default: the run's evaluation.max_extra_length)")
    parser.add_argument("--weights", nargs="+", default=["float32"], choices=WEIGHTS,
                        help="the decoding steps' weights (DecodingOptions.weights)")
    parser.add_argument("--limit", type=int, help="score only the first N sentences")
    parser.add_argument("--out", required=True, help="path stem of the result files")
    args = parser.parse_args(argv)
    command = "python -m keras_transformer.training.decoding_sweep " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    rows = []
    try:
        for row in sweep(args.run, args.average, args.beam, args.alpha, limit=args.limit,
                         stoppings=args.stopping, extra_lengths=args.max_extra_length,
                         weights=args.weights):
            del row["hypotheses"]
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items()
                              if k not in ("checkpoints", "chrf_signature")}), flush=True)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with open(args.out + ".results.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    write_table(rows, args.out + ".results.md", command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
