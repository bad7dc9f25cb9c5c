"""Resident memory of a run's training step, one length bucket at a time, with and without XLA.

    python bench/memory_training.py --run RUN [--out FILE]

RUN is a `keras-transformer train` directory (config.yaml and tokenizer.model are read;
nothing in it is changed). For each mode, in a fresh process with the CLI's allocator
setting (TF_CPU_ALLOCATOR_USE_BFC=true unless the mode says malloc): build the run's model
and optimizer as `training/train.py` does, train two steps on random ids at every length
bucket's batch shape of `training/data.py` (`batch_tokens // boundary` sentences of
`boundary` tokens, shortest bucket first) in one `fit` over a dataset whose shapes are
unknown (as `make_batches`' are: one traced step, one XLA program per shape), then
validate once on the run's `val` split. After each it records the resident set and the
process's peak (`keras_transformer.memory`), in MB. With XLA it also reads the compiled
step's buffer assignment (XLA_FLAGS --xla_dump_to, a temporary directory): the bytes one
step needs for its arguments and temporaries. Writes bench/results/memory_training.json
with the CPU flags. ~5 min on 2 cores.
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MODES = {"float32, XLA, BFC pool": dict(xla=True, bfc=True),
         "float32, XLA, malloc": dict(xla=True, bfc=False),
         "float32, no XLA, BFC pool": dict(xla=False, bfc=True)}


def probe(run_dir, xla):
    """The child: one mode's rows, printed as one JSON line."""
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_transformer.memory import image_peak_memory_mb, resident_memory_mb
    from keras_transformer.training import corpus
    from keras_transformer.training.config import load_config
    from keras_transformer.training.data import bucket_boundaries, make_batches, with_known_length
    from keras_transformer.training.train import build_model
    from keras_transformer.tokenizer import SubwordTokenizer

    rows, started = [], time.time()

    def mark(step):
        rows.append(dict(step=step, seconds=round(time.time() - started, 1),
                         resident_mb=resident_memory_mb(), peak_mb=image_peak_memory_mb()))
        print(f"{rows[-1]['seconds']:6.1f} s  {step:<28} resident {rows[-1]['resident_mb']:>5} MB"
              f"  peak {rows[-1]['peak_mb']:>5} MB", file=sys.stderr, flush=True)

    mark("TensorFlow imported")
    config = load_config(os.path.join(run_dir, "config.yaml"))
    config.training.jit_compile = xla
    config.training.mixed_precision = "none"
    tokenizer = SubwordTokenizer.load(os.path.join(run_dir, "tokenizer.model"))
    model = build_model(config, tokenizer, tf.distribute.get_strategy(), total_updates=10 ** 4)
    mark("model built")
    # Two batches of each bucket's shape through `fit`, from a dataset whose element shapes
    # are unknown, as `make_batches`' are: one traced step, one XLA program per shape.
    rng, vocab = np.random.default_rng(0), tokenizer.vocab_size
    shapes = [(max(1, config.training.batch_tokens // boundary), boundary)
              for boundary in bucket_boundaries(config.data.max_length)]

    def batches():
        for shape in shapes:
            for _ in range(2):
                source, target_in, target_out = (rng.integers(4, vocab, shape).astype("int32")
                                                 for _ in range(3))
                yield (source, target_in), target_out

    ids = tf.TensorSpec([None, None], tf.int32)
    data = tf.data.Dataset.from_generator(batches, output_signature=((ids, ids), ids))
    after_shape = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: (
        batch % 2 and mark("train step {}x{}".format(*shapes[batch // 2]))))
    model.fit(data, epochs=1, verbose=0, callbacks=[after_shape])
    valid = with_known_length(make_batches(
        corpus.split_pairs(config.data, "valid"), tokenizer,
        batch_tokens=config.training.batch_tokens, max_length=config.data.max_length))
    model.evaluate(valid, verbose=0)
    mark("validation pass")
    print(json.dumps(rows))


def xla_step_bytes(dump_dir):
    """{"arguments_and_temporaries_mb", "temporary_mb"} of the largest compiled train step."""
    best = None
    for path in glob.glob(os.path.join(dump_dir, "*one_step_on_data*buffer-assignment.txt")):
        text = open(path).read()
        total = re.search(r"Total bytes used: (\d+)", text)
        temp = re.findall(r"size (\d+), preallocated-temp", text)
        if total and (best is None or int(total.group(1)) > best[0]):
            best = (int(total.group(1)), sum(int(t) for t in temp))
    return best and {"arguments_and_temporaries_mb": round(best[0] / 2 ** 20),
                     "temporary_mb": round(best[1] / 2 ** 20)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="a keras-transformer train directory")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "memory_training.json"))
    parser.add_argument("--probe", choices=("xla", "no-xla"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe(args.run, args.probe == "xla")
        return
    from keras_transformer.training.precision import cpu_flags

    modes = {}
    for name, mode in MODES.items():
        with tempfile.TemporaryDirectory() as dump:
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                       TF_CPU_ALLOCATOR_USE_BFC="true" if mode["bfc"] else "false")
            if mode["xla"]:
                env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_dump_to={dump}").strip()
            print(f"== {name}", file=sys.stderr, flush=True)
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--run", args.run, "--probe",
                 "xla" if mode["xla"] else "no-xla"], env=env, cwd=REPO, check=True,
                stdout=subprocess.PIPE, text=True).stdout
            modes[name] = {"steps": json.loads(out.strip().splitlines()[-1])}
            if mode["xla"]:
                modes[name]["xla_step"] = xla_step_bytes(dump)
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx2", "avx512", "amx", "avx_vnni")))
    result = {"cpu": {"cores": os.cpu_count(), "flags": flags}, "run": os.path.abspath(args.run),
              "modes": modes}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    for name, mode in modes.items():
        steps = mode["steps"]
        print(f"{name}: built {steps[1]['resident_mb']} MB, first step {steps[2]['peak_mb']}, "
              f"second shape {steps[3]['peak_mb']}, all shapes {steps[-2]['peak_mb']}, "
              f"validated {steps[-1]['peak_mb']} MB peak; XLA step {mode.get('xla_step')}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
