"""What an exact resume costs: the time to skip the main job's training stream forward.

A resumed run (`training.resume: exact`, training/backup.py) reads the same seeded stream as
the killed one from the batch it stopped at, by running the input pipeline over the batches
already taken. This measures the time to the first batch after skipping 0, 1,500 and 3,000
batches of `training/configs/multi30k_en_de.yaml` (the main job takes ~3,200 steps).

    python bench/resume_skip.py        # ~2 min; writes bench/results/resume_skip.json
"""

import argparse
import json
import os
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(REPO, "training", "configs",
                                                         "multi30k_en_de.yaml"))
    parser.add_argument("--skips", default="0,1500,3000")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "resume_skip.json"))
    args = parser.parse_args(argv)

    from keras_transformer.training import corpus
    from keras_transformer.training.config import load_config
    from keras_transformer.training.data import make_batches
    from keras_transformer.training.precision import cpu_flags
    from keras_transformer.training.train import load_or_train_tokenizer

    config = load_config(args.config)
    training = config.training
    tokenizer = load_or_train_tokenizer(config, tempfile.mkdtemp(prefix="kt_skip_"))
    rows = []
    for skip in map(int, args.skips.split(",")):
        # The stream `train` builds, skipped as a resumed run skips it.
        stream = make_batches(
            corpus.split_pairs(config.data, "train", seed=training.seed), tokenizer=tokenizer,
            batch_tokens=training.batch_tokens, max_length=config.data.max_length,
            shuffle_buffer=training.shuffle_buffer, seed=training.seed, repeat=True,
            cache=corpus.cache_tokens(config.data)).skip(skip)
        started = time.perf_counter()
        next(iter(stream))
        seconds = time.perf_counter() - started
        rows.append({"skipped_batches": skip, "seconds_to_first_batch": round(seconds, 1)})
        print(f"skip {skip:>5} batches: {seconds:5.1f} s to the first batch", flush=True)
    per_batch = [(b["seconds_to_first_batch"] - rows[0]["seconds_to_first_batch"])
                 / b["skipped_batches"] for b in rows if b["skipped_batches"]]
    flags = cpu_flags()
    result = {"command": "python bench/resume_skip.py", "config": args.config,
              "cpu_vector_flags": sorted(f for f in flags if f.startswith(("avx", "amx"))),
              "cpu_count": os.cpu_count(), "rows": rows,
              "ms_per_skipped_batch": round(1000 * sum(per_batch) / len(per_batch), 1)
              if per_batch else None}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"{result['ms_per_skipped_batch']} ms a skipped batch; wrote {args.out}")


if __name__ == "__main__":
    main()
