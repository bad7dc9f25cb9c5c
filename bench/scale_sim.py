"""Does the input path scale to WMT14 sizes? A simulated corpus, measured (issue 15).

    python bench/scale_sim.py                                   # 0.5M, 1M, 2M pairs
    python bench/scale_sim.py --pairs 20000 --out /tmp/s.json   # a quick check

For each size it writes a parallel corpus of N sentence pairs as `--shards` gzip shards
(`train.SSS.en.gz` / `train.SSS.de.gz` in `--work`, reused when already there). Pair k
joins two Multi30k training pairs chosen by a seeded generator (source a + " " + source b,
target a + " " + target b), so the sentences are real text, ~26 words a side, and 29,000²
combinations keep them nearly all distinct.

Then, each in a fresh Python process so that its peak resident memory (`ru_maxrss`) is its
own:

- `idle`: import TensorFlow and this project, nothing else (the floor of every figure);
- `vocab`: learn the SentencePiece vocabulary as `train` does, from at most `--sample`
  sentences drawn from the streamed shards (`corpus.vocabulary_sentences`);
- `pipeline`: one full pass over the tokenized, shuffled, token-budget batches of the
  streamed shards, as `train` builds them for a large corpus (no token cache): time to the
  first batch, non-pad source + target tokens per second.

Memory must stay flat as N grows: the stream holds a shuffle buffer and a few blocks per
shard, the vocabulary a bounded sample. `--sample` defaults to 500,000 sentences so that
even the 0.5M-pair corpus (1M sentences) is sampled; with a bound above a corpus, the
vocabulary sees all of it and its memory follows the corpus up to the bound.

The pipeline's rate is compared with what training consumes: the base model's `fit` rate
on this CPU (bench/results/train.json, if present) and the paper's 8-GPU rate (25,000
target tokens a step at 0.4 s a step = 62,500 target tokens/s for one 8-GPU host).
Results go to bench/results/scale_sim.json.
"""

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_TARGET_TOKENS_PER_SECOND = 25_000 / 0.4  # §5.2: ~25k target tokens a batch, 0.4 s a step


def generate(work, pairs, shards, seed):
    """Write the simulated corpus (once) and return its (source glob, target glob)."""
    import numpy as np

    from keras_transformer.training.streaming import multi30k_paths, read_parallel

    directory = os.path.join(work, f"pairs{pairs}_shards{shards}_seed{seed}")
    source_glob = os.path.join(directory, "train.*.en.gz")
    target_glob = os.path.join(directory, "train.*.de.gz")
    done = os.path.join(directory, "DONE")
    if os.path.exists(done):
        return source_glob, target_glob, None
    os.makedirs(directory, exist_ok=True)
    started = time.perf_counter()
    # The seed corpus: 29,000 Multi30k pairs (2.7 MB), the only lists in this script.
    source, target = read_parallel(*multi30k_paths("train", "en", "de"))
    rng = np.random.default_rng(seed)
    bounds = np.linspace(0, pairs, shards + 1).astype(int)
    for shard in range(shards):
        count = int(bounds[shard + 1] - bounds[shard])
        with gzip.open(os.path.join(directory, f"train.{shard:03d}.en.gz"), "wt",
                       encoding="utf-8", compresslevel=1) as en, \
                gzip.open(os.path.join(directory, f"train.{shard:03d}.de.gz"), "wt",
                          encoding="utf-8", compresslevel=1) as de:
            for start in range(0, count, 10_000):
                chosen = rng.integers(0, len(source), size=(min(10_000, count - start), 2))
                en.write("".join(f"{source[a]} {source[b]}\n" for a, b in chosen))
                de.write("".join(f"{target[a]} {target[b]}\n" for a, b in chosen))
    open(done, "w").close()
    return source_glob, target_glob, round(time.perf_counter() - started, 1)


def _peak_rss_mb():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KB on Linux


def _text_config(args):
    from keras_transformer.training.config import parse_config

    return parse_config({"data": {"source": "text", "train_source": args.source,
                                  "train_target": args.target,
                                  "max_length": args.max_length},
                         "tokenizer": {"vocab_size": args.vocab_size,
                                       "sample_sentences": args.sample}}).data


def child_idle(args):
    import tensorflow  # noqa: F401

    from keras_transformer.training import corpus, data, streaming  # noqa: F401

    return {"peak_rss_mb": _peak_rss_mb()}


def child_vocab(args):
    from keras_transformer.tokenizer import SubwordTokenizer
    from keras_transformer.training import corpus

    config = _text_config(args)
    started = time.perf_counter()
    counted = [0]

    def counting(sentences):
        for sentence in sentences:
            counted[0] += 1
            yield sentence

    sentences = corpus.vocabulary_sentences(config, args.sample, seed=args.seed)
    tokenizer = SubwordTokenizer.train(counting(sentences), args.vocab_size,
                                       input_sentence_size=args.sample)
    tokenizer.save(args.tokenizer)
    return {"seconds": round(time.perf_counter() - started, 1), "sentences_sampled": counted[0],
            "vocab_size": tokenizer.vocab_size, "peak_rss_mb": _peak_rss_mb()}


def child_pipeline(args):
    import tensorflow as tf

    from keras_transformer.tokenizer import SubwordTokenizer
    from keras_transformer.training import corpus
    from keras_transformer.training.data import make_batches

    config = _text_config(args)
    tokenizer = SubwordTokenizer.load(args.tokenizer)
    started = time.perf_counter()
    pairs = corpus.split_pairs(config, "train", seed=args.seed)
    batches = make_batches(pairs, tokenizer, batch_tokens=args.batch_tokens,
                           max_length=args.max_length, shuffle_buffer=args.shuffle_buffer,
                           seed=args.seed, cache=False)

    def tokens(batch):
        (source, _), target_out = batch
        return (tf.math.count_nonzero(source, dtype=tf.int64),
                tf.math.count_nonzero(target_out, dtype=tf.int64))

    iterator = iter(batches.map(lambda *batch: (batch, tokens(batch))))
    first = None
    count = source_tokens = target_tokens = 0
    for _, (source_count, target_count) in iterator:
        if first is None:
            first = time.perf_counter() - started
        count += 1
        source_tokens += int(source_count)
        target_tokens += int(target_count)
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 1), "first_batch_seconds": round(first, 2),
            "batches": count, "source_tokens": source_tokens, "target_tokens": target_tokens,
            "tokens_per_second": round((source_tokens + target_tokens) / seconds),
            "target_tokens_per_second": round(target_tokens / seconds),
            "peak_rss_mb": _peak_rss_mb()}


CHILDREN = {"idle": child_idle, "vocab": child_vocab, "pipeline": child_pipeline}


def run_child(kind, args, **extra):
    command = [sys.executable, os.path.abspath(__file__), "--child", kind,
               "--seed", str(args.seed), "--sample", str(args.sample),
               "--vocab-size", str(args.vocab_size), "--batch-tokens", str(args.batch_tokens),
               "--max-length", str(args.max_length),
               "--shuffle-buffer", str(args.shuffle_buffer)]
    for key, value in extra.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    if done.returncode:
        sys.stderr.write(done.stderr[-3000:])
        raise SystemExit(f"the {kind} measurement failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fit_tokens_per_second():
    """Target tokens/s of one `fit` step of the base model on this CPU, if measured."""
    path = os.path.join(REPO, "bench", "results", "train.json")
    try:
        with open(path) as f:
            rows = json.load(f)["rows"]
        rates = [row["ours"]["tokens_per_second"] for row in rows
                 if row.get("workload") == "base" and "ours" in row]
        return max(rates) if rates else None
    except (OSError, KeyError, ValueError, TypeError):
        return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[500_000, 1_000_000, 2_000_000])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--work", default="/tmp/keras_transformer_scale_sim",
                        help="where the simulated shards are written (and reused)")
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "results", "scale_sim.json"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample", type=int, default=500_000,
                        help="tokenizer.sample_sentences: the vocabulary's sentence bound")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--max-length", type=int, default=100)
    parser.add_argument("--shuffle-buffer", type=int, default=30000)
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(CHILDREN[args.child](args)))
        return

    sys.path.insert(0, REPO)
    rows = []
    idle = run_child("idle", args)
    print(f"idle process (TensorFlow + project imported): {idle['peak_rss_mb']} MB", flush=True)
    fit_rate = _fit_tokens_per_second()
    for pairs in args.pairs:
        source, target, generate_seconds = generate(args.work, pairs, args.shards, args.seed)
        tokenizer = os.path.join(os.path.dirname(source), f"vocab{args.vocab_size}"
                                 f"_sample{args.sample}_seed{args.seed}.model")
        files = dict(source=source, target=target, tokenizer=tokenizer)
        vocab = run_child("vocab", args, **files)
        pipeline = run_child("pipeline", args, **files)
        row = {"pairs": pairs, "shards": args.shards, "generate_seconds": generate_seconds,
               "corpus_mb_gz": round(sum(
                   os.path.getsize(os.path.join(os.path.dirname(source), name))
                   for name in os.listdir(os.path.dirname(source)) if name.endswith(".gz"))
                   / 2**20, 1),
               "vocab": vocab, "pipeline": pipeline}
        if fit_rate:
            row["pipeline_over_base_fit_here"] = round(
                pipeline["target_tokens_per_second"] / fit_rate, 1)
        row["pipeline_over_paper_8gpu_host"] = round(
            pipeline["target_tokens_per_second"] / PAPER_TARGET_TOKENS_PER_SECOND, 2)
        rows.append(row)
        print(f"{pairs:>9,} pairs: vocab {vocab['seconds']} s, {vocab['peak_rss_mb']} MB peak "
              f"({vocab['sentences_sampled']:,} sentences); pipeline "
              f"{pipeline['tokens_per_second']:,} tok/s, first batch "
              f"{pipeline['first_batch_seconds']} s, {pipeline['peak_rss_mb']} MB peak",
              flush=True)
    result = {
        "command": "python bench/scale_sim.py " + " ".join(argv if argv is not None
                                                           else sys.argv[1:]),
        "settings": {k: getattr(args, k) for k in ("shards", "seed", "sample", "vocab_size",
                                                  "batch_tokens", "max_length",
                                                  "shuffle_buffer")},
        "cpu_count": os.cpu_count(),
        "idle_peak_rss_mb": idle["peak_rss_mb"],
        "base_fit_target_tokens_per_second_here": fit_rate,
        "paper_target_tokens_per_second_8gpu": PAPER_TARGET_TOKENS_PER_SECOND,
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
