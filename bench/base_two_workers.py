"""The paper's base recipe under MultiWorkerMirroredStrategy, two local workers (issue 15).

    python bench/base_two_workers.py                 # 200k pairs, 6 steps: ~10-25 min here
    python bench/base_two_workers.py --pairs 20000 --max-steps 2 --out /tmp/b.json

A smoke run of `training/configs/wmt14_en_de_base.yaml` as a cluster would run it, with
the corpus swapped for simulated shards:

1. `--pairs` sentence pairs are written as `--shards` gzip shards by the writer of
   bench/scale_sim.py (imported, reused when already there): real Multi30k text, two
   training pairs joined per line.
2. A config is derived from the base YAML: the model, vocabulary size, learning-rate
   schedule, label smoothing, max length, checkpoint averaging stay the paper's;
   `data.source: text` with the shard globs for the train split and the shipped Multi30k
   val split for validation; `strategy: multi_worker`; `max_steps` / `steps_per_epoch`
   small; the vocabulary learned from at most `--sample` sentences; the token cache off
   (as for a corpus too big to cache); `--batch-tokens` per worker instead of 25,000
   (at 25,000 tokens a step of the base model on one CPU core takes minutes, and the
   37k-way logits alone take ~3.7 GB a worker); checkpoints and backups (at epoch ends)
   every `--steps-per-epoch` steps, so that the chief's writes are exercised.
3. Two `keras-transformer train --no-evaluate --no-export` processes on one run
   directory, TF_CONFIG naming two workers on 127.0.0.1 (worker 0 is the chief).

Recorded in bench/results/base_two_workers.json: each worker's exit code, wall time,
peak resident memory (`os.wait4`'s rusage of that process) and bytes written to disk
(`/proc/PID/io` write_bytes, last sample before it exited); the chief's summary (steps,
per-epoch loss and validation loss, seconds per epoch); what the run directory holds
and the checks that the chief alone wrote it; the CPU's vector flags. Identical weights
on both workers are not checked here (the non-chief worker writes nothing by design);
tests/test_distributed.py checks them with a tiny model.

Other jobs may share the CPU while this runs: the timings are indicative only.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import scale_sim  # its shard writer; importing it loads no TensorFlow

BASE_CONFIG = os.path.join(REPO, "training", "configs", "wmt14_en_de_base.yaml")
MULTI30K = os.path.join(REPO, "training", "data", "multi30k")


def derive_config(args, source_glob, target_glob):
    """The base YAML with the corpus swapped for the shards and the run made short."""
    with open(BASE_CONFIG, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    for key in ("tfds_name", "valid_split", "test_split"):  # TFDS only
        config["data"].pop(key, None)
    config["data"].update(
        source="text", train_source=source_glob, train_target=target_glob,
        valid_source=os.path.join(MULTI30K, "val.en.gz"),
        valid_target=os.path.join(MULTI30K, "val.de.gz"),
        test_source=os.path.join(MULTI30K, "test_2016_flickr.en.gz"),
        test_target=os.path.join(MULTI30K, "test_2016_flickr.de.gz"),
        cache_tokens=False)
    config["tokenizer"]["sample_sentences"] = args.sample
    config["training"].update(
        strategy="multi_worker", max_steps=args.max_steps,
        steps_per_epoch=args.steps_per_epoch, batch_tokens=args.batch_tokens,
        checkpoint_every=args.steps_per_epoch)
    return config


def _write_bytes(pid):
    try:
        with open(f"/proc/{pid}/io") as f:
            return int(next(line for line in f if line.startswith("write_bytes:")).split()[1])
    except (OSError, StopIteration, ValueError):
        return None


def run_workers(config_path, run_dir, logs, timeout):
    """Launch the two workers, wait for both (killing them after `timeout` s); per worker:
    exit code, wall seconds, peak RSS, bytes written, log file."""
    from keras_transformer.training.strategy import local_tf_configs

    tf_configs = local_tf_configs(2)
    cluster = json.loads(tf_configs[0])["cluster"]
    # `keras-transformer train`, run as a module of this interpreter so that the workers
    # import the same keras_transformer as this script (PYTHONPATH is inherited).
    command = [sys.executable, "-m", "keras_transformer.cli", "train", "--config",
               config_path, "--out", run_dir, "--verbose", "2", "--no-evaluate", "--no-export"]
    workers = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=tf_configs[index])
        log = os.path.join(logs, f"worker{index}.log")
        with open(log, "w") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        workers.append({"index": index, "role": "chief" if index == 0 else "worker",
                        "pid": process.pid, "process": process, "log": log,
                        "started": time.perf_counter(), "write_bytes": 0})
    deadline = time.perf_counter() + timeout
    running = list(workers)
    while running:
        for worker in list(running):
            pid, status, usage = os.wait4(worker["pid"], os.WNOHANG)
            if pid == 0:
                written = _write_bytes(worker["pid"])
                if written is not None:
                    worker["write_bytes"] = written
                continue
            worker["process"].returncode = os.waitstatus_to_exitcode(status)
            worker.update(exit_code=worker["process"].returncode,
                          wall_seconds=round(time.perf_counter() - worker["started"], 1),
                          peak_rss_mb=round(usage.ru_maxrss / 1024))
            running.remove(worker)
        if running and time.perf_counter() > deadline:
            for worker in running:
                worker["process"].kill()  # our own child, by its pid
                worker["timed_out"] = True
            deadline = float("inf")
        time.sleep(1)
    for worker in workers:
        del worker["process"], worker["started"], worker["pid"]
        worker["written_mb"] = round(worker.pop("write_bytes") / 2**20, 1)
    return command, cluster, workers


def check_run_dir(run_dir, summary, checkpoint_every, worker_logs, worker_written_mb):
    """What the run directory holds, and the signs that the chief alone wrote it."""
    files = sorted(os.path.relpath(os.path.join(root, name), run_dir)
                   for root, _, names in os.walk(run_dir) for name in names)
    history_rows = 0
    if os.path.exists(os.path.join(run_dir, "history.csv")):
        with open(os.path.join(run_dir, "history.csv")) as f:
            history_rows = len(f.read().strip().splitlines()) - 1
    events = [f for f in files if f.startswith(os.path.join("logs", "train") + os.sep)]
    checkpoints = [f for f in files if f.startswith("checkpoints" + os.sep)]
    with open(worker_logs[1], errors="replace") as f:
        other_log = f.read()
    epochs = summary.get("epochs_this_run")
    checks = {
        "history_rows_equal_epochs": history_rows == epochs,
        "one_tensorboard_train_events_file": len(events) == 1,
        "checkpoints_equal_steps_over_checkpoint_every":
            len(checkpoints) == summary.get("steps", -1) // checkpoint_every,
        "only_the_chief_printed_trained": "steps; run saved in" not in other_log,
        "the_other_worker_wrote_under_1_mb_to_disk": worker_written_mb[1] < 1,
        "summary_says_chief_and_two_workers": summary.get("chief") is True
            and summary.get("num_workers") == 2,
    }
    sizes = {f: round(os.path.getsize(os.path.join(run_dir, f)) / 2**20, 2) for f in files}
    return {"files_mb": sizes, "history_rows": history_rows, "checks": checks}


def code_version():
    """The commit of the code the workers import, and whether its tree was modified."""
    import keras_transformer

    root = os.path.dirname(os.path.dirname(os.path.realpath(keras_transformer.__file__)))

    def git(*args):
        done = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True,
                              check=False)
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"keras_transformer": os.path.dirname(keras_transformer.__file__),
            "commit": git("rev-parse", "HEAD"),
            "modified_files": status.splitlines() if status else []}


def cpu_flags():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return {}
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = info.get("Flags", "").split()
    return {"model_name": info.get("Model name", "").strip(),
            "vector_flags": [f for f in flags if f == "avx2" or "bf16" in f
                             or f.startswith(("avx512", "amx"))]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="/tmp/keras_transformer_scale_sim",
                        help="where the simulated shards are written (and reused)")
    parser.add_argument("--run-dir", default="/tmp/keras_transformer_base_two_workers",
                        help="the run directory (emptied first) and the workers' logs")
    parser.add_argument("--max-steps", type=int, default=6)
    parser.add_argument("--steps-per-epoch", type=int, default=3)
    parser.add_argument("--batch-tokens", type=int, default=4096,
                        help="per side and per worker (the paper: ~25,000 over 8 GPUs)")
    parser.add_argument("--sample", type=int, default=100_000,
                        help="tokenizer.sample_sentences: the vocabulary's sentence bound")
    parser.add_argument("--timeout-minutes", type=float, default=40)
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "results",
                                                      "base_two_workers.json"))
    args = parser.parse_args(argv)

    started = time.perf_counter()
    source_glob, target_glob, generate_seconds = scale_sim.generate(
        args.work, args.pairs, args.shards, args.seed)
    made = f"written in {generate_seconds} s" if generate_seconds else "reused"
    print(f"shards: {source_glob} ({made})", flush=True)
    if os.path.exists(args.run_dir):
        shutil.rmtree(args.run_dir)
    run_dir, logs = os.path.join(args.run_dir, "run"), os.path.join(args.run_dir, "logs")
    os.makedirs(logs)
    config = derive_config(args, source_glob, target_glob)
    config_path = os.path.join(args.run_dir, "base_two_workers.yaml")
    with open(config_path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f, sort_keys=False)

    print(f"two workers training {args.max_steps} steps of the base model ...", flush=True)
    command, cluster, workers = run_workers(config_path, run_dir, logs,
                                            args.timeout_minutes * 60)
    for worker in workers:
        print(f"worker {worker['index']} ({worker['role']}): exit {worker['exit_code']}, "
              f"{worker['wall_seconds']} s, peak {worker['peak_rss_mb']} MB", flush=True)
    summary = {}
    if os.path.exists(os.path.join(run_dir, "summary.json")):
        with open(os.path.join(run_dir, "summary.json")) as f:
            summary = json.load(f)
    keep = ("steps", "num_workers", "steps_per_epoch", "epochs_this_run", "precision",
            "parameters", "vocab_size", "epoch_seconds", "train_seconds_this_run",
            "train_seconds", "wall_seconds", "peak_memory_mb", "averaged_checkpoints",
            "history")
    result = {
        "command": " ".join(["python bench/base_two_workers.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "worker_command": " ".join(command) + "  # TF_CONFIG task.index 0 / 1",
        "cluster": cluster,
        "note": ("Timings are indicative only: two workers share the machine's CPU cores, "
                 "and other jobs (test runs) used the same cores during this run. "
                 f"{args.max_steps} steps inside the paper's 4,000-step warm-up move the "
                 "learning rate only to ~1e-6: the loss is not expected to fall; the run "
                 "proves the mechanics, not learning."),
        "settings": {
            "base_config": os.path.relpath(BASE_CONFIG, REPO),
            "pairs": args.pairs, "shards": args.shards, "seed": args.seed,
            "changed_from_base_config": {
                "data": {k: config["data"][k] for k in (
                    "source", "train_source", "train_target", "valid_source",
                    "valid_target", "cache_tokens")},
                "tokenizer.sample_sentences": args.sample,
                "training": {k: config["training"][k] for k in (
                    "strategy", "max_steps", "epochs", "steps_per_epoch", "batch_tokens",
                    "checkpoint_every") if k in config["training"]},
                "batch_tokens_reason": (
                    "25,000 tokens per side per worker would take minutes a step on one "
                    "CPU core and ~10 GB a worker (the 37k-way logits alone ~3.7 GB); "
                    "the model's shape stays base"),
            },
            "evaluate_and_export": False,
        },
        "code": code_version(),
        "cpu": {**cpu_flags(), "cpu_count": os.cpu_count()},
        "generate_seconds": generate_seconds,
        "vocabulary": {
            "config_vocab_size": config["tokenizer"]["vocab_size"],
            "learned_vocab_size": summary.get("vocab_size"),
            "note": ("SentencePiece's size is a soft limit here (hard_vocab_limit=False): "
                     "the simulated corpus, recombined Multi30k text, holds fewer distinct "
                     "pieces than the base config asks for, so the embedding is smaller "
                     "than WMT14's and so is the parameter count")},
        "workers": workers,
        "chief_summary": {k: summary[k] for k in keep if k in summary},
        "run_dir": check_run_dir(run_dir, summary, args.steps_per_epoch,
                                 [w["log"] for w in workers],
                                 [w["written_mb"] for w in workers]),
        "identical_weights": ("not checked here: the non-chief worker writes no weights by "
                              "design; tests/test_distributed.py::"
                              "test_multi_worker_fit_ends_with_identical_weights checks it"),
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    for worker in workers:
        with open(worker["log"], errors="replace") as f:
            worker["log_tail"] = f.read()[-1500:].splitlines()[-12:]
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")
    ok = all(w.get("exit_code") == 0 for w in workers) and all(
        result["run_dir"]["checks"].values())
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
