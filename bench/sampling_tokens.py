"""What subword regularization costs in tokens: one pass over a run's training split
(both sides) in the best segmentation and in segmentations sampled at each α
(`SubwordTokenizer.sampler`, the op `tokenizer.sampling_alpha` trains with), with the
share of sentences a sample segments differently from the best. More tokens an epoch
means fewer epochs in a time budget.

    python bench/sampling_tokens.py --run RUN [--alpha 0.25 0.3 0.35 0.4]
    # seconds; bench/results/sampling_tokens.json
"""

import argparse
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished run directory")
    parser.add_argument("--alpha", type=float, nargs="+", default=[0.25, 0.3, 0.35, 0.4])
    parser.add_argument("--out", default=os.path.join(HERE, "results", "sampling_tokens.json"))
    args = parser.parse_args()

    from keras_transformer.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    from keras_transformer.tokenizer import SubwordTokenizer
    from keras_transformer.training import corpus
    from keras_transformer.training.config import load_config

    config = load_config(os.path.join(args.run, "config.yaml"))
    tokenizer = SubwordTokenizer.load(os.path.join(args.run, "tokenizer.model"))
    source, target = corpus.split_lines(config.data, "train")
    sentences = source + target
    best = tokenizer.tokenize(sentences)
    best_tokens = int(best.flat_values.shape[0])
    best_rows = best.to_list()
    rows = []
    for alpha in args.alpha:
        sampled = tokenizer.sampler(alpha)(sentences)
        tokens = int(sampled.flat_values.shape[0])
        changed = sum(a != b for a, b in zip(sampled.to_list(), best_rows))
        rows.append({"alpha": alpha, "tokens": tokens,
                     "more_tokens_percent": round(100 * (tokens / best_tokens - 1), 1),
                     "sentences_resegmented_percent": round(100 * changed / len(sentences), 1)})
        print(f"α {alpha}: {rows[-1]['more_tokens_percent']:+.1f} % tokens, "
              f"{rows[-1]['sentences_resegmented_percent']:.1f} % of sentences resegmented")
    result = {"run": os.path.basename(os.path.normpath(args.run)), "sentences": len(sentences),
              "best_tokens": best_tokens, "vocab_size": tokenizer.vocab_size, "samples": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
