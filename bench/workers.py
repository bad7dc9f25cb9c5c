"""Batches at once in `translate_lines` (`WORKERS`): the run's model over the
1,000 test_2016_flickr sentences (beam and α of its config, batches of 32 sorted by
length), steady state, for 1, 2 and 4 workers on TensorFlow's default threads and for 2
workers with one intra-op thread each, and 2 workers taking the batches in plain sorted
order instead of from both ends (`translation._from_both_ends`). Each setting runs in a
fresh process (threads are set once a process): a first pass (compiles every shape
bucket), then the faster of two timed ones; `--rounds N` repeats the settings N times,
interleaved. `--saved-model` times the run's exported SavedModel (what `translate --file`
runs) instead of the Keras model.

    python bench/workers.py --run RUN [--rounds 2] [--saved-model]
    # ~4 min a round; bench/results/workers.json (workers_saved_model.json)
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SETTINGS = [dict(workers=1, intra=0), dict(workers=2, intra=0),
            dict(workers=2, intra=0, order="sorted"), dict(workers=4, intra=0),
            dict(workers=2, intra=1)]


def _child(run, workers, intra, order="both_ends", saved_model=False):
    import tensorflow as tf

    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    from keras_transformer import translation
    from keras_transformer.training import corpus
    from keras_transformer.training.evaluate import load_run
    from keras_transformer.translation import TextTranslator, translate_lines

    if order == "sorted":  # the order before both ends: shortest batch first
        translation._from_both_ends = list

    config, model, tokenizer = load_run(run)
    sources, _ = corpus.split_lines(config.data, "test")
    if saved_model:
        from keras_transformer.export.saved_model import saved_model_translator

        translate = saved_model_translator(os.path.join(run, "saved_model"))
    else:
        text = TextTranslator(model, tokenizer, config.evaluation.decoding_options())
        translate = lambda batch: text.translate(batch).numpy()  # noqa: E731
    passes = []
    for _ in range(3):
        start = time.perf_counter()
        translate_lines(translate, sources, 32, 0, workers)
        passes.append(round(time.perf_counter() - start, 2))
    return dict(workers=workers, intra_op_threads=intra or "default", order=order,
                first_pass=passes[0], seconds=sorted(passes[1:])[0], passes=passes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--saved-model", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.run, **json.loads(args.child))))
        return
    rows = []
    env = dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC="true", TF_CPP_MIN_LOG_LEVEL="2")
    for setting in SETTINGS * args.rounds:
        child = json.dumps(dict(setting, saved_model=args.saved_model))
        done = subprocess.run([sys.executable, __file__, "--run", args.run, "--child", child],
                              env=env, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    flags = open("/proc/cpuinfo").read().split("flags")[1].split("\n")[0].split()
    out = dict(run=args.run, cpu_flags=sorted(f for f in flags if f.startswith(("avx", "amx"))),
               cores=len(os.sched_getaffinity(0)), rows=rows)
    name = "workers_saved_model.json" if args.saved_model else "workers.json"
    out["model"] = "saved_model" if args.saved_model else "keras"
    with open(os.path.join(HERE, "results", name), "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
