"""Every benchmark in one command, then one Markdown report.

    pip install -e ".[bench]"
    python bench/run.py [--run runs/multi30k_en_de]

Runs, one after the other on an otherwise idle machine (each script's docstring says what
it measures and how):

    bench/train.py    training tokens/s and MFU, ours vs keras-hub      (~14 min on 2 cores)
    bench/table1.py   self-attention vs LSTM vs convolution, Table 1     (~1.5 min)
    bench/decode.py   decoding latency, ours vs keras-hub samplers      (~2 min)
    bench/edge.py     LiteRT size / latency / BLEU of a run's .tflite   (with --run; ~0.5 min)
    bench/vs_ctranslate2.py  decoding vs CTranslate2 on the same weights, its settings swept;
                      with --run also the run end to end on the test set (~8 min; ~13 with --run)

and writes bench/results/README.md from their JSON files, next to train.png and table1.png.
`--skip NAME ...` leaves a script out and reuses its last JSON.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, HERE)


def run(script, *args):
    command = [sys.executable, os.path.join(HERE, script), *args]
    print("$ " + " ".join(command), flush=True)
    started = time.time()
    subprocess.run(command, check=True)
    return round(time.time() - started)


def load(name):
    path = os.path.join(RESULTS, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def train_section(results):
    import train

    peaks = results["matmul_peak_gflops"]
    return ["## Training throughput (`bench/train.py`)", "",
            f"Matmul peak measured in the same run (tf.matmul 2048²): fp32 {peaks['float32']} "
            f"GFLOP/s, bf16 {peaks['mixed_bfloat16']} GFLOP/s. Target tokens/s, median of "
            f"{results['windows']} windows after warm-up (steps per workload in train.json).",
            "", train.markdown(results), "", "![training throughput](train.png)", ""]


def table1_section(results):
    lines = ["## Table 1: one layer, forward + backward (`bench/table1.py`)", "",
             f"Batch {results['batch']}; milliseconds, median of calls.", ""]
    kinds = list(next(iter(results["times_ms"].values())))
    lines.append("| d | n | " + " | ".join(kinds) + " |")
    lines.append("|---|---|" + "---:|" * len(kinds))
    for width in results["widths"]:
        times = results["times_ms"][str(width)]
        for i, n in enumerate(results["lengths"]):
            lines.append(f"| {width} | {n} | " + " | ".join(f"{times[k][i]:.2f}" for k in kinds)
                         + " |")
    ratios = []
    for w in results["widths"]:
        times = results["times_ms"][str(w)]
        first = times["self-attention"][0] / times["recurrent (LSTM)"][0]
        last = times["self-attention"][-1] / times["recurrent (LSTM)"][-1]
        cross = results["crossover_n"][str(w)]
        ratios.append(f"d = {w}: {cross if cross else 'no crossover in the grid'} "
                      f"(self-attention / LSTM time {first:.2f} at n = {results['lengths'][0]}, "
                      f"{last:.2f} at n = {results['lengths'][-1]})")
    lines += ["", "Length n from which self-attention is slower than the LSTM — "
              + "; ".join(ratios) + ".", "", "![Table 1](table1.png)", ""]
    return lines


def decode_section(results):
    lines = ["## Decoding latency (`bench/decode.py`)", "",
             "| decoder | batch | ms (median) | min–max |", "|---|---:|---:|---:|"]
    for r in results["results"]:
        lines.append(f"| {r['decoder']} | {r['batch']} | {r['median_ms']} "
                     f"| {r['min_ms']}–{r['max_ms']} |")
    lines += ["", "| speed-up | × |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in results["speedups"].items()]
    return lines + [""]


def edge_section(results):
    lines = [f"## On device (`bench/edge.py`, LiteRT, {results['threads']} threads, batch 1)", "",
             "| model | size MiB | vs fp32 | beam 4 ms | greedy ms | BLEU |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results["results"]:
        cells = [r.get(k, "–") for k in ("size_mib", "size_vs_fp32", "beam4_ms", "greedy_ms")]
        lines.append(f"| {r['model']} | " + " | ".join(str(c) for c in cells)
                     + f" | {r.get('bleu', '–')} |")
    return lines + [""]


def vs_ctranslate2_section(results):
    import vs_ctranslate2

    return ["## Decoding vs CTranslate2 on the same weights (`bench/vs_ctranslate2.py`)", "",
            vs_ctranslate2.markdown(results), ""]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", help="a trained run with RUN/edge/*.tflite, for bench/edge.py, "
                        "and saved_model/ + model.int8.tflite for bench/vs_ctranslate2.py")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["train", "table1", "decode", "edge", "vs_ctranslate2"])
    args = parser.parse_args(argv)
    seconds = {}
    if "train" not in args.skip:
        seconds["train"] = run("train.py")
    if "table1" not in args.skip:
        seconds["table1"] = run("table1.py")
    if "decode" not in args.skip:
        seconds["decode"] = run("decode.py")
    if args.run and "edge" not in args.skip:
        seconds["edge"] = run("edge.py", "--run", args.run)
    if "vs_ctranslate2" not in args.skip:
        seconds["vs_ctranslate2"] = run("vs_ctranslate2.py",
                                        *(["--run", args.run] if args.run else []))
    lines = ["# Benchmark results", "",
             "Written by `python bench/run.py`; every figure is from the JSON file next to it.",
             ""]
    for name, section in (("train.json", train_section), ("table1.json", table1_section),
                          ("decode.json", decode_section), ("edge.json", edge_section),
                          ("vs_ctranslate2.json", vs_ctranslate2_section)):
        results = load(name)
        if results:
            lines += section(results)
    if seconds:
        lines.append("Wall time of the last run: " + ", ".join(
            f"{k} {v // 60} min {v % 60} s" for k, v in seconds.items()) + ".")
    with open(os.path.join(RESULTS, "README.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote " + os.path.join(RESULTS, "README.md"))


if __name__ == "__main__":
    main()
