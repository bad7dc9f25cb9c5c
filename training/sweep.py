"""Recipe search on the validation split: train each point of a grid, score `valid`.

    python -m keras_transformer.training.sweep \
        --base training/configs/multi30k_en_de.yaml \
        --grid training/results/sweep/grid.yaml --out runs/sweep

The grid is a YAML list of points, each `{name: ..., set: {section: {key: value}}}`
applied on top of the base config. Every point trains from scratch in `OUT/NAME`
(no export), is scored with sacreBLEU on the validation split (never the test set) and
appends one row to `RESULTS.jsonl` beside the grid; `RESULTS.md` is rewritten after each
point. Points already in the results are skipped, so a stopped sweep continues.
"""

import argparse
import copy
import json
import os
import time

import yaml

from keras_transformer.training.config import parse_config
from keras_transformer.training.evaluate import evaluate_run
from keras_transformer.training.train import train


def merged(base, changes):
    """`base` (nested dict) with the `{section: {key: value}}` changes applied."""
    values = copy.deepcopy(base)
    for section, keys in (changes or {}).items():
        values.setdefault(section, {}).update(keys)
    return values


def run_point(base, point, out_dir):
    run_dir = os.path.join(out_dir, point["name"])
    config = parse_config(merged(base, point.get("set")), where=f"sweep point {point['name']}")
    started = time.time()
    _, _, summary = train(config, run_dir, verbose=2)
    train_minutes = (time.time() - started) / 60
    report = evaluate_run(run_dir, split="valid", verbose=0)
    history = summary["history"]
    return {
        "name": point["name"], "set": point.get("set") or {},
        "val_bleu": report["bleu"], "val_loss": round(min(history["val_loss"]), 4),
        "last_val_loss": round(history["val_loss"][-1], 4),
        "epochs": len(history["val_loss"]), "steps": summary["steps"],
        "parameters": summary["parameters"], "train_minutes": round(train_minutes, 1),
        "averaged": len(summary["averaged_checkpoints"]), "beam": report["beam_size"],
        "alpha": report["alpha"],
    }


def write_table(rows, path):
    lines = ["| point | changes | val BLEU | best val loss | epochs | steps | params | "
             "train min |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        changes = "; ".join(f"{s}.{k}={v}" for s, keys in r["set"].items()
                            for k, v in keys.items())
        lines.append(f"| {r['name']} | {changes} | {r['val_bleu']:.2f} | {r['val_loss']:.3f} | "
                     f"{r['epochs']} | {r['steps']} | {r['parameters']:,} | "
                     f"{r['train_minutes']:.1f} |")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the base run config (YAML)")
    parser.add_argument("--grid", required=True, help="YAML list of {name, set}")
    parser.add_argument("--out", default="runs/sweep", help="directory for the runs")
    parser.add_argument("--only", nargs="*", help="run only these point names")
    args = parser.parse_args(argv)
    with open(args.base, encoding="utf-8") as f:
        base = yaml.safe_load(f)
    with open(args.grid, encoding="utf-8") as f:
        grid = yaml.safe_load(f)
    stem = os.path.splitext(args.grid)[0]
    results_path = stem + ".results.jsonl"
    rows = []
    if os.path.exists(results_path):
        with open(results_path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    done = {r["name"] for r in rows}
    for point in grid:
        if point["name"] in done or (args.only and point["name"] not in args.only):
            continue
        row = run_point(base, point, args.out)
        rows.append(row)
        with open(results_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        write_table(rows, stem + ".results.md")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
