"""The `train` command: train, then BLEU, SavedModel and TFLite, each phase in a fresh image.

TensorFlow does not give back all that a phase allocates (XLA executables, traced graphs,
the TFLite converter's MLIR, glibc arenas), so in one process every phase starts from the
high-water mark of the ones before it: the main job held 2.6 GB after training and peaked
at 4.5 GB converting to TFLite, where the conversion alone needed 2.6 GB (1.8 GB since it
converts one signature a call; `bench/memory_phases.py`). Run as a command, `train`
therefore replaces its process image between phases (`os.execv`: the same pid, so a shell,
a scheduler or `/usr/bin/time` still sees one job). Each phase starts from a bare
interpreter and the job's peak is its largest phase's. What crosses the exec (start time,
seconds and peak of each phase, phases left) travels as one JSON argument.

Called as a function (`cli.main([...])` from tests or a notebook) the phases run in the
caller's process, which must not be replaced, with `release_memory()` between them;
each phase's figure in summary.json is then the process's peak so far.
"""

import json
import os
import sys
import time

PHASES = ("evaluate", "saved_model", "tflite")


def run_train_command(args, own_process):
    """The `train` command for parsed `args`; `own_process`: phases may replace the image."""
    fresh_image = bool(args.phase_state)  # started by an exec: no phase has run in it yet
    if fresh_image:
        state = json.loads(args.phase_state)
    else:
        state = _train_phase(args)
        if state is None:  # another worker of a multi-worker run: the chief does the rest
            return
    _run_phases(args, state, own_process and os.name == "posix", fresh_image)


def _train_phase(args):
    from keras_transformer.memory import image_peak_memory_mb
    from keras_transformer.training.config import load_config
    from keras_transformer.training.train import train

    started = time.time()
    config = load_config(args.config)
    run_dir = args.out or os.path.join("runs", os.path.splitext(os.path.basename(args.config))[0])
    _, _, summary = train(config, run_dir, verbose=args.verbose, force=args.force)
    if not summary["chief"]:
        return None
    print(f"trained {summary['steps']} steps; run saved in {run_dir}")
    todo = [phase for phase in PHASES if not (
        phase == "evaluate" and args.no_evaluate or phase != "evaluate" and args.no_export)]
    return {"started": started, "run_dir": run_dir, "todo": todo,
            "seconds": {"train": round(time.time() - started, 1)},
            "memory_mb": {"train": image_peak_memory_mb()}, "start_memory_mb": {}}


def _run_phases(args, state, may_exec, fresh_image):
    from keras_transformer.memory import image_peak_memory_mb, release_memory

    while state["todo"]:
        if may_exec and not fresh_image:
            _exec_next(args, state)  # does not return
        if not may_exec:
            release_memory()  # each phase starts from what the last one holds, not its heap
        phase = state["todo"].pop(0)
        began = time.time()
        # The high-water mark the phase starts from: in a fresh image, Python + TensorFlow.
        state["start_memory_mb"][phase] = image_peak_memory_mb()
        _PHASE_RUNNERS[phase](state["run_dir"])
        state["seconds"][phase] = round(time.time() - began, 1)
        state["memory_mb"][phase] = image_peak_memory_mb()
        fresh_image = False
    _write_job_summary(state)


def _exec_next(args, state):
    """Replace this process with one that runs the phases left."""
    argv = [sys.executable, "-m", "keras_transformer.cli", "train", "--config", args.config,
            "--out", state["run_dir"], "--verbose", str(args.verbose),
            "--phase-state", json.dumps(state)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def _evaluate(run_dir):
    from keras_transformer.cli import score

    score(run_dir)


def _saved_model(run_dir):
    from keras_transformer.cli import export

    export(run=run_dir, fmt="saved_model", out=os.path.join(run_dir, "saved_model"))


def _tflite(run_dir):
    from keras_transformer.cli import export

    export(run=run_dir, fmt="tflite", out=os.path.join(run_dir, "model.int8.tflite"),
           quantize="int8")


_PHASE_RUNNERS = {"evaluate": _evaluate, "saved_model": _saved_model, "tflite": _tflite}


def _write_job_summary(state):
    """Add the whole command's wall time, phase seconds and memory to summary.json."""
    from keras_transformer.training.train import write_summary

    with open(os.path.join(state["run_dir"], "summary.json")) as f:
        summary = json.load(f)
    seconds = state["seconds"]
    phases = {"train_seconds": seconds["train"]}
    if "evaluate" in seconds:
        phases["evaluate_seconds"] = seconds["evaluate"]
    if "saved_model" in seconds or "tflite" in seconds:
        phases["export_seconds"] = round(seconds.get("saved_model", 0)
                                         + seconds.get("tflite", 0), 1)
    wall = round(time.time() - state["started"], 1)
    # Per phase: that phase's own peak (its process image's); "job": the largest of them.
    # Not getrusage's ru_maxrss: a process forked from a large one (a test runner) and
    # exec'd inherits the parent's resident size at the fork as its peak.
    memory = {**state["memory_mb"], "job": max(state["memory_mb"].values())}
    write_summary(state["run_dir"], {**summary, **phases, "wall_seconds": wall,
                                     "peak_memory_mb": memory,
                                     "phase_start_memory_mb": state["start_memory_mb"]})
    print(f"done in {wall / 60:.1f} min; peak memory {memory['job'] / 1024:.2f} GB")
