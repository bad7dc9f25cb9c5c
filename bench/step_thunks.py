"""Where a compiled decoding step's time goes, by XLA instruction.

`bench/step_profile.py` times parts of the beam-search loop body; this looks inside one
of them. Each part (`step_profile.variants`: beam_search, decode_step, decoder_layers,
best_extensions, ...) is compiled, then run `--rounds` times under TensorFlow's profiler.
XLA's CPU runtime records one trace event per executed thunk (a dot, a fusion, a custom
call such as TopK), named after its HLO instruction; the optimized HLO of the same
function (`experimental_get_compiler_ir`) gives each instruction's opcode, shape and the
TensorFlow op it came from. Events are summed per instruction and per kind:

    dot (batched)   dots with batch dimensions (the attention products)
    dot (2-D)       the projections ([rows, d] x [d, n])
    custom-call     XLA's TopK
    fusion          loop and reduction fusions (elementwise work, softmax, reductions),
                    and ops XLA wraps as a fusion of one (`wrapped_…`: the max pool's
                    reduce-window, a pad, a log)
    other           what runs outside any fusion (copies, small top-ks, ...)

Microseconds per loop step (loop iterations = `--steps` x `--rounds`), the same shapes as
step_profile (main-job model shape, random weights, 32 sentences x beam 4 = 128 rows).
Thunks run one at a time here, so their sum is close to the wall time; the JSON has both.

    python bench/step_thunks.py [--parts beam_search best_extensions] [--weights int8]
                                [--out bench/results/step_thunks.float32.json]
"""

import argparse
import collections
import glob
import json
import os
import re
import shutil
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
from tensorflow.tsl.profiler.protobuf import xplane_pb2

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import step_profile  # noqa: E402
from keras_transformer.decoding_options import WEIGHTS  # noqa: E402
from keras_transformer.training.precision import cpu_flags  # noqa: E402

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\([^)]*\)|\S+) ([\w\-]+)\((.*)$")
_TF_OP = re.compile(r'op_name="([^"]+)"')
_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_BATCH = re.compile(r"lhs_batch_dims=\{[0-9,]+\}")


def hlo_instructions(hlo_text):
    """{name: (kind, shape, tensorflow op)} of the instructions in optimized HLO text."""
    found = {}
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, shape, opcode, rest = match.groups()
        if opcode in ("while", "conditional", "call"):  # their events span the thunks inside
            continue
        shape = re.sub(r"\{[0-9,]*\}", "", shape)  # drop layouts
        if opcode == "dot":
            kind = "dot (batched)" if _BATCH.search(rest) else "dot (2-D)"
        elif opcode == "custom-call":
            target = _TARGET.search(rest)
            kind = f"custom-call {target.group(1) if target else ''}".strip()
        elif opcode == "fusion":
            kind = "fusion"
        else:
            kind = "other"
        tf_op = _TF_OP.search(rest)
        found[name] = (kind, shape, tf_op.group(1) if tf_op else "")
    return found


def thunk_times(logdir, names):
    """{instruction name: (total µs, calls)} from the profile in `logdir`."""
    totals = collections.defaultdict(lambda: [0.0, 0])
    for path in glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")):
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
        for plane in space.planes:
            metadata = {key: value.name for key, value in plane.event_metadata.items()}
            for line in plane.lines:
                for event in line.events:
                    name = metadata.get(event.metadata_id)
                    if name in names:
                        totals[name][0] += event.duration_ps / 1e6
                        totals[name][1] += 1
    return totals


def profile_part(fn, source, steps, rounds, top):
    """One part's thunk profile: per kind and the `top` costliest instructions."""
    fn(source)  # trace and compile
    instructions = hlo_instructions(fn.experimental_get_compiler_ir(source)(stage="optimized_hlo"))
    logdir = tempfile.mkdtemp(prefix="step_thunks_")
    try:
        tf.profiler.experimental.start(logdir)
        try:
            start = time.perf_counter()
            for _ in range(rounds):
                np.asarray(fn(source))
            wall = time.perf_counter() - start
        finally:
            tf.profiler.experimental.stop()
        totals = thunk_times(logdir, instructions)
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    iterations = steps * rounds
    by_kind = collections.Counter()
    rows = []
    for name, (micros, calls) in totals.items():
        kind, shape, tf_op = instructions[name]
        by_kind[kind] += micros / iterations
        rows.append(dict(instruction=name, kind=kind, shape=shape, tf_op=tf_op,
                         us_per_step=round(micros / iterations, 1),
                         calls_per_step=round(calls / iterations, 2)))
    rows.sort(key=lambda row: -row["us_per_step"])
    return dict(wall_ms_per_step=round(wall * 1e3 / iterations, 3),
                thunk_ms_per_step=round(sum(by_kind.values()) / 1e3, 3),
                by_kind_us_per_step={k: round(v, 1) for k, v in by_kind.most_common()},
                top=rows[:top])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=["beam_search", "best_extensions"],
                        help="step_profile parts to profile")
    parser.add_argument("--batch", type=int, default=32, help="sentences (rows = batch x 4)")
    parser.add_argument("--capacity", type=int, default=32, help="self-attention cache slots")
    parser.add_argument("--steps", type=int, default=32, help="loop iterations per call")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--top", type=int, default=25, help="instructions listed per part")
    parser.add_argument("--weights", default="float32", choices=WEIGHTS)
    parser.add_argument("--out", default=None,
                        help="default: bench/results/step_thunks.<weights>.json")
    args = parser.parse_args(argv)
    out = args.out or os.path.join(HERE, "results", f"step_thunks.{args.weights}.json")

    model = step_profile.build_model()
    source = step_profile.source_ids(args.batch)
    variants = step_profile.variants(model, args.batch, args.capacity, args.steps, args.weights)
    unknown = sorted(set(args.parts) - set(variants))
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from {sorted(variants)}")
    parts = {}
    for name in args.parts:
        parts[name] = profile_part(variants[name], source, args.steps, args.rounds, args.top)
        kinds = ", ".join(f"{k} {v / 1e3:.2f}" for k, v in parts[name]["by_kind_us_per_step"].items())
        print(f"{name}: {parts[name]['wall_ms_per_step']:.2f} ms/step wall, thunks {kinds}",
              flush=True)
    flags = cpu_flags()
    result = dict(model=step_profile.SHAPE, weights=args.weights, batch=args.batch,
                  beam=step_profile.BEAM, rows_per_step=args.batch * step_profile.BEAM,
                  capacity=args.capacity, steps=args.steps, rounds=args.rounds,
                  tensorflow=tf.__version__,
                  cpu_flags={f: f in flags for f in step_profile.FLAGS},
                  cores=os.cpu_count(), parts=parts)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
