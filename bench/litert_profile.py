"""Where LiteRT spends an int8 decode: a `perf` profile of the vs_ctranslate2 cells.

    apt-get install linux-perf          # Debian; any `perf` on PATH will do
    python bench/litert_profile.py [--run RUN] [--cells 32x4 1x4 32x1 1x1] [--threads 1]
                                   [--seconds 12] [--callers]
                                   [--out bench/results/litert_profile.json]

The model and cells of bench/vs_ctranslate2.py (the "small" preset with random weights, the
eos embedding zeroed, source length 16, exactly 64 decoder steps; BATCHxBEAM), converted to
the int8 .tflite and run by its `greedy_ids` / `translate_ids` signature in LiteRT. LiteRT
has no per-operator profiler reachable from Python, so each cell runs in a child process
that warms up, then calls the signature in a loop, while `perf record -e cpu-clock` samples
that process (steady state only: conversion, loading and the first call are outside the
window). The samples are grouped by the kernel they land in: XNNPACK's int8 matmuls (with
the instruction set of the micro-kernel: avx512amx, avx512vnni, avx2, ...), its activation
quantization and other operators, TFLite's built-in kernels by operator, the interpreter,
Python, libc and the OS. "ms a call" is a group's share of the samples times the median
call time measured in the same window. With --callers the stacks are unwound too (DWARF)
and each sample in a libc copy is charged to the TFLite operator that made it (WHILE's
loop-state copies, GATHER, CONCATENATION, ...). --run RUN takes the vocabulary from the
run, as vs_ctranslate2.py does (else one is learned on Multi30k train).
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# (group, pattern over "dso symbol"); the first match names a sample's group.
GROUPS = (
    ("XNNPACK int8 matmul ({isa})", r"xnn_qdu?8_f32_qc8w_gemm\w*?__(\w+)"),
    ("XNNPACK quantize activations", r"xnn_\w*(qdu?8_vcvt|f32_qdu?8|rminmax|f32_qs8_vcvt)"),
    ("XNNPACK float32 matmul", r"xnn_f32_(gemm|igemm|ppmm)"),
    ("XNNPACK packing matmul operands", r"xnn_\w*packw"),
    ("XNNPACK other", r"xnn_|xnnpack"),
    ("TFLite {op}", r"tflite::ops::builtin::(\w+)::"),
    ("TFLite kernel {op}", r"tflite::(?:optimized_ops|reference_ops|optimized_4bit)::(\w+)"),
    ("TFLite interpreter", r"tflite::|TfLite|litert"),
    ("Python", r"libpython|python3|_Py|Py[A-Z]"),
    ("libc (memcpy, memset, malloc)", r"libc[.-]|libstdc\+\+|memcpy|memset|malloc"),
    ("OS kernel", r"\[kernel"),
)


def group_of(line):
    for name, pattern in GROUPS:
        match = re.search(pattern, line)
        if match:
            return name.format(isa=match.group(match.lastindex or 0) if "{isa}" in name else "",
                               op=match.group(1) if "{op}" in name else "")
    return "other"


def parse_report(text):
    """{symbol line: percent} from `perf report --stdio --sort dso,symbol` output."""
    rows = {}
    for line in text.splitlines():
        match = re.match(r"\s*([\d.]+)%\s+(.*\S)", line)
        if match and not line.lstrip().startswith("#"):
            rows[match.group(2)] = rows.get(match.group(2), 0.0) + float(match.group(1))
    return rows


def callers_of_copies(perf, data):
    """{TFLite operator: % of all samples} for the samples in libc copies (memmove, memset,
    memcpy): each is charged to the innermost TFLite built-in operator (or the XNNPACK
    delegate) on its DWARF-unwound stack."""
    script = subprocess.run([perf, "script", "-i", data, "-F", "ip,sym,dso"],
                            capture_output=True, text=True, check=True).stdout
    charged, samples = Counter(), 0
    for block in script.split("\n\n"):
        frames = [line.strip() for line in block.splitlines() if line.strip()]
        if not frames:
            continue
        samples += 1
        if not re.search(r"mem(move|cpy|set)", frames[0]):
            continue
        caller = "unknown (stack not unwound)"
        for frame in frames[1:]:
            match = re.search(r"tflite::ops::builtin::(\w+)::|tflite::(xnnpack)::", frame)
            if match:
                caller = match.group(1) or "XNNPACK delegate"
                break
        charged[caller] += 1
    return {op: round(100 * n / max(samples, 1), 1) for op, n in charged.most_common()}


def child(path, signature, batch, threads, seconds):
    """Warm up, print "ready", call the signature for `seconds`, print the call times."""
    import numpy as np

    import ctranslate2_peer as ct2
    from keras_transformer.export import litert

    runner = litert.load_interpreter(path, threads).get_signature_runner(signature)
    vocab = int(os.environ.get("PROFILE_VOCAB", "8000"))
    ids = ct2.random_source_ids(vocab, batch, 16, 0).astype(np.int32)
    runner(source_ids=ids)
    print("ready", flush=True)
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        runner(source_ids=ids)
        times.append(1000 * (time.perf_counter() - start))
    print(json.dumps(times), flush=True)


def profile_cell(perf, path, vocab, batch, beam, threads, seconds, tmp, callers=False):
    import vs_ctranslate2 as vs

    signature = vs.SIGNATURES[beam]
    env = dict(os.environ, PROFILE_VOCAB=str(vocab))
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--child", path, signature, str(batch),
         str(threads), str(seconds)], stdout=subprocess.PIPE, text=True, env=env)
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the {signature} child failed before its first call")
    data = os.path.join(tmp, f"{batch}x{beam}.perf")
    unwind = ["--call-graph", "dwarf,16384"] if callers else []
    subprocess.run([perf, "record", "-q", "-e", "cpu-clock", "-F", "997", *unwind, "-p",
                    str(proc.pid), "-o", data, "--", "sleep", str(max(1, seconds - 1))],
                   check=True, stdout=subprocess.DEVNULL)
    times = json.loads(proc.stdout.readline())
    proc.wait()
    report = subprocess.run([perf, "report", "-i", data, "--no-children", "--sort", "dso,symbol",
                             "--stdio", "--percent-limit", "0"], capture_output=True, text=True,
                            check=True).stdout
    symbols = parse_report(report)
    groups = Counter()
    for line, percent in symbols.items():
        groups[group_of(line)] += percent
    ms = statistics.median(times)
    top = sorted(symbols.items(), key=lambda kv: -kv[1])[:15]
    copies = callers_of_copies(perf, data) if callers else None
    return dict(batch=batch, beam_size=beam, threads=threads, calls=len(times),
                median_ms=round(ms, 2), copies_by_operator=copies,
                groups=[dict(group=g, percent=round(p, 1), ms_per_call=round(ms * p / 100, 2))
                        for g, p in groups.most_common()],
                top_symbols=[dict(symbol=s, percent=round(p, 2)) for s, p in top])


def markdown(results):
    lines = [f"CPU: {results['cpu']['model']}; flags: "
             + ", ".join(k for k, v in results["cpu"]["flags"].items() if v) + "."]
    for cell in results["cells"]:
        search = "greedy" if cell["beam_size"] == 1 else f"beam {cell['beam_size']}"
        lines += ["", f"Batch {cell['batch']}, {search}, {cell['threads']} thread(s): "
                  f"{cell['median_ms']} ms a call (median of {cell['calls']}).", "",
                  "| where | % of samples | ms a call |", "|---|---:|---:|"]
        lines += [f"| {g['group']} | {g['percent']} | {g['ms_per_call']} |"
                  for g in cell["groups"] if g["percent"] >= 0.5]
        if cell.get("copies_by_operator"):
            lines += ["", "libc copies by the TFLite operator that made them (% of all samples): "
                      + ", ".join(f"{op} {p}" for op, p in cell["copies_by_operator"].items()
                                  if p >= 0.5) + "."]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", help="a training run whose tokenizer.model to use")
    parser.add_argument("--cells", nargs="+", default=["32x4", "1x4", "32x1", "1x1"],
                        help="BATCHxBEAM, beam 1 (greedy) or 4")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=int, default=12, help="sampling window per cell")
    parser.add_argument("--callers", action="store_true",
                        help="also unwind stacks (DWARF) to charge libc copies to operators")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "litert_profile.json"))
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args(argv)
    if args.child:
        path, signature, batch, threads, seconds = args.child
        return child(path, signature, int(batch), int(threads), float(seconds))
    perf = shutil.which("perf")
    if not perf:
        raise SystemExit("perf not found: apt-get install linux-perf")
    cells = []
    for cell in args.cells:
        batch, beam = (int(x) for x in cell.split("x"))
        if beam not in (1, 4):
            raise SystemExit(f"--cells {cell}: the .tflite decodes greedy (1) or beam 4")
        cells.append((batch, beam))
    import decode
    import vs_ctranslate2 as vs

    model = decode.build_model()
    tokenizer = vs.synthetic_tokenizer(args.run, smoke=False)
    results = dict(cpu=vs.cpu_info(), model="small preset, random weights, eos zeroed",
                   source_length=vs.SOURCE_LENGTH, new_tokens=decode.NEW_TOKENS, cells=[])
    with tempfile.TemporaryDirectory() as tmp:
        path = vs.int8_tflite(model, tokenizer, os.path.join(tmp, "s.int8.tflite"),
                              decode.NEW_TOKENS)
        for batch, beam in cells:
            results["cells"].append(profile_cell(perf, path, model.config.vocab_size, batch,
                                                 beam, args.threads, args.seconds, tmp,
                                                 args.callers))
            print(json.dumps(results["cells"][-1]["groups"][:6]), flush=True)
    vs.write_results(results, args.out, markdown)


if __name__ == "__main__":
    main()
