"""Resident memory through a TFLite export, phase by phase, and what release_memory returns.

    python bench/memory_phases.py --run RUN [--out FILE]

In one fresh process: import TensorFlow, load a training run, trace the translator's
signatures, convert them as `keras-transformer export --format tflite` does (one converter
call a signature, released after each, the flatbuffers joined: `export/tflite.py`), release,
then convert all of them in one converter call (as the export used to) and release. Each
line is the resident set and the peak so far (`keras_transformer.memory`), in MB. RUN needs
model.keras and tokenizer.model (any `keras-transformer train` directory). Writes
bench/results/memory_phases.json with the CPU flags. ~1 min on 2 cores.
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from keras_transformer.memory import (peak_memory_mb, release_memory,  # noqa: E402
                                      resident_memory_mb)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="a keras-transformer train directory")
    parser.add_argument("--quantize", default="int8", choices=("none", "float16", "int8"))
    parser.add_argument("--out", default=os.path.join(HERE, "results", "memory_phases.json"))
    args = parser.parse_args()

    started, phases = time.time(), []

    def mark(name):
        row = {"phase": name, "seconds": round(time.time() - started, 1),
               "resident_mb": resident_memory_mb(), "peak_mb": peak_memory_mb()}
        phases.append(row)
        print(f"{row['seconds']:6.1f} s  {name:<40} resident {row['resident_mb']:>5} MB"
              f"  peak {row['peak_mb']:>5} MB", flush=True)

    mark("import TensorFlow")  # importing keras_transformer.memory imported it
    from keras_transformer.export.tflite import EdgeTranslator, convert_functions, to_tflite
    from keras_transformer.training.evaluate import load_run
    from keras_transformer.training.precision import cpu_flags

    config, model, tokenizer = load_run(args.run)
    mark("load the run")
    options = config.evaluation.decoding_options(max_output_length=128)
    translator = EdgeTranslator(model.with_dtype("float32"), tokenizer, options)
    functions = translator.concrete_functions()
    mark(f"trace {len(functions)} translator signatures")
    release_memory()
    mark("release")
    to_tflite(translator, args.quantize)
    mark(f"convert {len(functions)} signatures, a call each, joined")
    release_memory()
    mark("release")
    convert_functions(functions, args.quantize)
    mark(f"convert all {len(functions)} in one call")
    release_memory()
    mark("release")
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx2", "avx512", "amx", "avx_vnni")))
    result = {"cpu": {"cores": os.cpu_count(), "flags": flags}, "run": os.path.abspath(args.run),
              "quantize": args.quantize, "phases": phases}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
