"""What a training step of the main job's model costs as its shape changes.

    python bench/train_shapes.py [--rounds 2] [--steps 40] [--out bench/results/train_shapes.json]

The main config's model (4+4 layers, d_model 128, 4 heads, d_ff 256, vocab 8,000, dropout
0.25, label smoothing 0.2) and one-setting variants of it: vocabulary, d_ff, d_model,
depth. Each trains with `model.fit` under XLA, float32, on one fixed batch of the main job's
size (64 sentences × 32 source and 32 target tokens, random ids, no padding) after 5 warm-up
steps; a shape's figure is the median time between step ends over `--steps` steps, and the
shapes take turns for `--rounds` rounds (this VM's pace drifts by ~10 % within minutes, so
each round's times are kept and the table shows their median). A recipe search over shapes
in a fixed hour needs this: a shape that costs 10 % more an update gets ~10 % fewer epochs.
"""

import argparse
import gc
import json
import os
import statistics
import sys

import keras
import numpy as np
import tensorflow as tf

import keras_transformer as kt
from keras_transformer.losses import MaskedAccuracy, MaskedCrossEntropy
from keras_transformer.schedules import paper_optimizer
from keras_transformer.training.precision import cpu_flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train import StepTimer, random_batches  # noqa: E402

MAIN = dict(num_encoder_layers=4, num_decoder_layers=4, d_model=128, num_heads=4, d_ff=256,
            vocab_size=8000, dropout=0.25, label_smoothing=0.2)
VARIANTS = [
    ("main", {}),
    ("vocab 6,000", {"vocab_size": 6000}),
    ("d_ff 512", {"d_ff": 512}),
    ("d_ff 1,024", {"d_ff": 1024}),
    ("d_model 192, d_ff 512", {"d_model": 192, "d_ff": 512}),
    ("3+3 layers", {"num_encoder_layers": 3, "num_decoder_layers": 3}),
    ("4+3 layers", {"num_decoder_layers": 3}),
]
BATCH, SOURCE_LEN, TARGET_LEN, WARMUP = 64, 32, 32, 5


def step_ms(change, steps):
    """Median ms an update of the main shape with `change` applied, and its parameters."""
    keras.backend.clear_session()
    gc.collect()
    shape = {**MAIN, **change}
    config = kt.TransformerConfig.from_preset("small", **shape)
    model = kt.Transformer(config)
    model.compile(optimizer=paper_optimizer(config.d_model, 1200),
                  loss=MaskedCrossEntropy(config.label_smoothing), metrics=[MaskedAccuracy()],
                  jit_compile=True)
    source, target_in, target_out = random_batches(shape["vocab_size"], BATCH, SOURCE_LEN,
                                                   TARGET_LEN)
    data = tf.data.Dataset.from_tensors(((source, target_in), target_out)).repeat()
    timer = StepTimer()
    model.fit(data, steps_per_epoch=WARMUP + steps, epochs=1, verbose=0, callbacks=[timer])
    gaps = np.diff(timer.ends[WARMUP - 1:])
    return 1e3 * statistics.median(gaps), model.count_params()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="turns each shape takes")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per shape a round")
    parser.add_argument("--out", default="bench/results/train_shapes.json")
    args = parser.parse_args(argv)
    times, params = {name: [] for name, _ in VARIANTS}, {}
    for round_ in range(args.rounds):
        for name, change in VARIANTS:
            ms, params[name] = step_ms(change, args.steps)
            times[name].append(round(ms, 1))
            print(f"round {round_ + 1}  {name:24s} {ms:7.1f} ms/step", flush=True)
    main_ms = statistics.median(times["main"])
    rows = [{"shape": name, "change": change, "ms_per_step_by_round": times[name],
             "ms_per_step": round(statistics.median(times[name]), 1),
             "relative_to_main": round(statistics.median(times[name]) / main_ms, 3),
             "parameters": params[name]} for name, change in VARIANTS]
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "fma", "amx")))
    result = {"batch": BATCH, "source_length": SOURCE_LEN, "target_length": TARGET_LEN,
              "steps": args.steps, "rounds": args.rounds, "precision": "float32", "xla": True,
              "tensorflow": tf.__version__, "cores": os.cpu_count(), "cpu_flags": flags,
              "rows": rows}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
