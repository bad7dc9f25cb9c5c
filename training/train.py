"""Train a translator with `model.fit` following the recipe of §5.

A run directory holds everything needed to resume, evaluate and export:

    config.yaml        the resolved configuration
    tokenizer.model    the shared SentencePiece vocabulary
    backup/            the training state at the last epoch ends: a killed run resumes
                       from here, step-exact (training/backup.py); removed once finished
    checkpoints/       ckpt-eEEE-bBBBBBB.weights.h5 every `checkpoint_every` steps
    logs/              TensorBoard
    history.csv        per-epoch loss / accuracy (train and validation)
    model.keras        the final model (the average of the last checkpoints, §6.1)
    translator.keras   the same weights with the vocabulary and decoding options
    learning_curve.png loss and accuracy per epoch (matplotlib)
    summary.json       steps, wall time, final metrics
    .lock              held by the `train` process using the directory

In a multi-worker run only the chief writes the run directory; every worker restores from
its backup (the weights are the same on all of them) and logs nowhere else.

Running the same command again continues a killed run where its last backup left it, and
a finished run is not trained again (`train` returns it for scoring and export). Another
config than the run's is refused unless `force=True`.
"""

import json
import math
import os
import time

import keras

from keras_transformer.atomic import remove, replaced_when_done
from keras_transformer.losses import MaskedAccuracy, MaskedCrossEntropy
from keras_transformer.memory import release_memory
from keras_transformer.model import Transformer
from keras_transformer.schedules import cosine_schedule, paper_optimizer
from keras_transformer.tokenizer import SubwordTokenizer
from keras_transformer.training import corpus
from keras_transformer.training.averaging import average_checkpoints, list_checkpoints
from keras_transformer.training.backup import (RunBackup, StepCheckpoints, backups,
                                               discard_after, discard_partial_files,
                                               remove_backups, restore, trim_history)
from keras_transformer.training.config import RunError, load_config, save_config
from keras_transformer.training.data import (epoch_size, make_batches, with_known_length,
                                             worker_shard)
from keras_transformer.training.plot import plot_history, read_history
from keras_transformer.training.precision import resolve_precision
from keras_transformer.training.progress import (BudgetedDecay, EpochClock, StepLimit,
                                                 TimeBudget, TrainingPlan, optimizer_steps)
from keras_transformer.training.strategy import make_strategy
from keras_transformer.translator import Translator


def load_or_train_tokenizer(config, run_dir, is_chief=True, wait_seconds=1800):
    """Reuse the run's vocabulary when resuming. Otherwise the chief learns it from at most
    `tokenizer.sample_sentences` training sentences, a seeded sample streamed from the
    corpus (`corpus.vocabulary_sentences`), and writes it to the run directory; the other
    workers of a multi-worker run wait for that file (the run directory is shared)."""
    path = os.path.join(run_dir, "tokenizer.model")
    if not os.path.exists(path) and is_chief:
        sample = config.tokenizer.sample_sentences
        tokenizer = SubwordTokenizer.train(
            corpus.vocabulary_sentences(config.data, sample, seed=config.training.seed),
            config.tokenizer.vocab_size, input_sentence_size=sample)
        with replaced_when_done(path) as partial:  # workers never read half a file
            tokenizer.save(partial)
        return tokenizer
    waited = 0
    while not os.path.exists(path):
        if waited >= wait_seconds:
            raise RunError(f"{path}: the chief wrote no vocabulary in {wait_seconds} s; "
                           "every worker needs the same run directory (--out)")
        time.sleep(5)
        waited += 5
    return SubwordTokenizer.load(path)


def build_model(config, tokenizer, strategy, total_updates=None):
    """The model and its compiled recipe, created under the strategy's scope.

    `total_updates` (the run's planned optimizer updates) ends a cosine decay.
    """
    training = config.training
    dtype, jit_compile = resolve_precision(training.mixed_precision, training.jit_compile)
    model_config = config.model.replace(vocab_size=tokenizer.vocab_size)
    with strategy.scope():
        model = Transformer(model_config, dtype=dtype)
        optimizer = paper_optimizer(model_config.d_model, training.warmup_steps,
                                    training.learning_rate_scale, training.decay,
                                    total_updates, weight_decay=training.weight_decay)
        if dtype == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        model.compile(
            optimizer=optimizer,
            loss=MaskedCrossEntropy(model_config.label_smoothing, model_config.pad_id),
            metrics=[MaskedAccuracy(model_config.pad_id)],
            jit_compile=jit_compile,
            accumulate_batches=training.accumulate_batches,
        )
    return model


def callbacks(config, run_dir, backup):
    """The chief's callbacks (the other workers of a multi-worker run write nothing)."""
    return [
        StepCheckpoints(os.path.join(run_dir, "checkpoints"), config.training.checkpoint_every),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"), update_freq=50),
        # Raising (not a graceful stop) keeps the last good backup: a graceful stop would
        # save the diverged weights as the run's finished state.
        keras.callbacks.TerminateOnNaN(raise_error=True),
        keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv"), append=True),
        # XLA compiles and validation free heap that glibc keeps resident: in a one-epoch
        # probe of the main job, giving it back after every batch lowered the plateau from
        # 2.34 to 2.10 GB but cost ~3 % of the epoch; once an epoch it is negligible.
        keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: release_memory()),
        # Last: an epoch's history row is written before its backup; a kill between the
        # two re-runs the epoch, and `trim_history` drops the row it logs again.
        backup,
    ]


def train(config, run_dir, verbose="auto", force=False):
    """Train according to `config` into `run_dir`, continuing the run it holds.

    Returns `(model, tokenizer, summary)`; `summary["chief"]` is False on the other
    workers of a multi-worker run, which write nothing to `run_dir`. A run directory
    started with another config is a RunError unless `force` (then the new config is
    saved and an unfinished run continues from its backup with it; a finished run is
    never trained further). One `train` at a time may use a run directory.
    """
    strategy = make_strategy(config.training.strategy, config.training.devices)
    keras.utils.set_random_seed(config.training.seed)
    # The train split streams from its files (never a Python list); each worker of a
    # multi-worker run reads its own part of it (training/streaming.py, stream_pairs).
    num_workers, worker_index = worker_shard(strategy)
    chief = worker_index == 0
    _check_same_config(config, run_dir, force)
    if _finished(run_dir):
        return _load_finished(run_dir, chief)
    fresh = chief and not os.path.exists(os.path.join(run_dir, "config.yaml"))
    if chief:
        os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
        lock = hold_lock(run_dir)  # noqa: F841 (held until this function returns)
        discard_partial_files(run_dir)
        with replaced_when_done(os.path.join(run_dir, "config.yaml")) as partial:
            save_config(config, partial)
    tokenizer = load_or_train_tokenizer(config, run_dir, is_chief=chief)
    batches = {"tokenizer": tokenizer, "batch_tokens": config.training.batch_tokens,
               "max_length": config.data.max_length}
    steps_per_epoch, tokens_per_epoch, epochs = _epochs(config, batches, num_workers)
    # Updates planned: a step limit or the epochs, each k batches with accumulation.
    total_updates = config.training.max_steps or (
        epochs * steps_per_epoch // config.training.accumulate_batches)
    if config.training.decay == "cosine" and total_updates <= config.training.warmup_steps:
        if fresh:  # nothing trained: the corrected config must not meet "another config"
            for name in ("config.yaml", "tokenizer.model"):
                remove(os.path.join(run_dir, name))
        raise RunError(f"training.decay cosine: the run's {total_updates} updates end before "
                       f"training.warmup_steps ({config.training.warmup_steps}) is over; "
                       "lower warmup_steps or train longer")
    model = build_model(config, tokenizer, strategy, total_updates)
    backup_dir = os.path.join(run_dir, "backup")
    state = restore(model, backup_dir) or {}
    if chief and not state.get("finished"):  # what the killed run wrote after its backup
        trim_history(os.path.join(run_dir, "history.csv"), state.get("epochs_done", 0))
        discard_after(run_dir, state.get("epochs_done", 0))
    # A resumed run reads the same seeded stream from the batch it stopped at, or with
    # `training.resume: reshuffle` a stream seeded afresh (config.py says why).
    taken = state.get("batches", 0)
    reseed = taken if config.training.resume == "reshuffle" else 0
    seed = config.training.seed + reseed
    train_data = make_batches(
        corpus.split_pairs(config.data, "train", seed=seed, num_workers=num_workers,
                           worker_index=worker_index),
        shuffle_buffer=config.training.shuffle_buffer, seed=seed, repeat=True,
        cache=corpus.cache_tokens(config.data), sampling_alpha=config.tokenizer.sampling_alpha,
        **batches).skip(taken - reseed)
    valid_data = with_known_length(make_batches(corpus.split_pairs(config.data, "valid"),
                                                **batches))

    policy = model.dtype_policy.name
    budget = config.training.time_budget_minutes
    backup = RunBackup(backup_dir, state, write=chief)
    clock = EpochClock()
    plan = TrainingPlan(clock, epochs, steps_per_epoch, tokens_per_epoch,
                        f"{policy}, XLA {'on' if model.jit_compile else 'off'}", budget,
                        config.training.schedule_to_budget)
    stopper = TimeBudget(clock, budget, used_seconds=backup.seconds_before) if budget else None
    extra = [clock, plan] + ([stopper] if stopper else [])
    decay = None
    if config.training.schedule_to_budget:
        schedule = cosine_schedule(model.optimizer)
        if state.get("cosine_total_steps"):  # the end the killed run had planned
            schedule.set_total_steps(state["cosine_total_steps"])
        decay = BudgetedDecay(clock, stopper, schedule, total_updates,
                              config.training.accumulate_batches)
        extra.append(decay)
    if config.training.max_steps:
        extra.append(StepLimit(config.training.max_steps))
    started = time.time()
    history = {}
    if not state.get("finished"):  # else killed after training, before model.keras
        try:
            history = model.fit(
                train_data, validation_data=valid_data, epochs=epochs,
                initial_epoch=state.get("epochs_done", 0), steps_per_epoch=steps_per_epoch,
                shuffle=False, verbose=verbose if chief else 0,
                callbacks=[*extra, *(callbacks(config, run_dir, backup) if chief else
                                     [keras.callbacks.TerminateOnNaN(raise_error=True)])]
            ).history
        except RuntimeError as e:
            if "NaN or Inf loss" not in str(e):
                raise
            raise RunError(f"training diverged ({e}); the backup of the last epoch end is "
                           f"kept: lower training.learning_rate_scale or raise "
                           f"training.warmup_steps, then resume with --force") from None
    train_seconds = time.time() - started

    # Read before averaging: loading a checkpoint also restores its optimizer step.
    steps = optimizer_steps(model)
    if num_workers > 1:
        if not chief:
            return model, tokenizer, {"chief": False, "steps": steps}
        # Averaging validates the model, a collective under MultiWorkerMirroredStrategy
        # that the other workers no longer join: the chief finishes on a local copy.
        trained, model = model, build_model(config, tokenizer, make_strategy("default"),
                                            total_updates)
        model.set_weights(trained.get_weights())
        for local, variable in zip(model.optimizer.variables, trained.optimizer.variables):
            local.assign(variable.numpy())  # its step and moments, saved in model.keras
    # The last `average_last` states of the run: its final weights count as one when
    # the run stopped between checkpoints (e.g. by the time budget).
    last = config.training.average_last
    between = steps % config.training.checkpoint_every != 0
    checkpoints = list_checkpoints(os.path.join(run_dir, "checkpoints"))
    keep = last - between  # checkpoint files to take
    averaged = checkpoints[-keep:] if keep > 0 else []
    if len(averaged) + between > 1:
        final_weights = model.get_weights()
        average_checkpoints(model, averaged, include_current=between)
        if _no_worse(model, valid_data, final_weights):
            averaged = [os.path.basename(p) for p in averaged] + ["final"] * between
        else:
            averaged = []
    else:
        averaged = []
    with replaced_when_done(os.path.join(run_dir, "model.keras")) as partial:
        model.save(partial)
    # The text-level model: weights, vocabulary and decoding options in one file.
    with replaced_when_done(os.path.join(run_dir, "translator.keras")) as partial:
        Translator.from_trained(model, tokenizer,
                                config.evaluation.decoding_options()).save(partial)
    plot_history(run_dir)
    summary = {
        "chief": True,
        "num_workers": num_workers,
        "steps": steps,
        "steps_per_epoch": steps_per_epoch,
        "target_tokens_per_epoch": tokens_per_epoch,
        "precision": plan.precision,
        "epoch_seconds": clock.epoch_seconds,
        "stopped_by_time_budget": bool(stopper and stopper.stopped_after),
        # training.schedule_to_budget: the update the cosine ended at, planned after each epoch
        "schedule_ends": decay.ends if decay else None,
        "resumed_after_steps": state.get("batches", 0),
        "steps_this_run": clock.steps,
        "epochs_this_run": len(history.get("loss", [])),
        "train_seconds_this_run": round(train_seconds, 1),
        "train_seconds_all_runs": round(backup.seconds(), 1),
        # Real (non-pad) target tokens per second of `fit`, validation passes included.
        "target_tokens_per_second": round(
            tokens_per_epoch / steps_per_epoch * clock.steps / train_seconds
        ) if tokens_per_epoch and clock.steps else None,
        "averaged_checkpoints": averaged,
        "vocab_size": tokenizer.vocab_size,
        "parameters": model.count_params(),
        "history": read_history(run_dir),
    }
    write_summary(run_dir, summary)
    remove_backups(backup_dir)  # the run is complete: nothing to resume
    return model, tokenizer, summary


def write_summary(run_dir, summary):
    """summary.json, written whole or not at all."""
    with replaced_when_done(os.path.join(run_dir, "summary.json")) as partial, \
            open(partial, "w") as f:
        json.dump(summary, f, indent=2)


def _check_same_config(config, run_dir, force):
    """Refuse to continue a run with another config than the one it was started with."""
    path = os.path.join(run_dir, "config.yaml")
    if force or not os.path.exists(path):
        return
    before, now = _flatten(load_config(path).to_dict()), _flatten(config.to_dict())
    changed = [f"{key}: {before.get(key)!r} -> {now.get(key)!r}"
               for key in sorted(set(before) | set(now))
               if before.get(key) != now.get(key) and not key.startswith(_FREE_TO_CHANGE)]
    if changed:
        raise RunError(f"{run_dir} was started with another config ({'; '.join(changed[:4])}"
                       f"{'; ...' if len(changed) > 4 else ''}); train into another --out, "
                       f"or pass --force to continue this run with the new config")


# Settings that do not change what training computes up to the backup: how to resume the
# data stream, and how to score and decode.
_FREE_TO_CHANGE = ("training.resume", "evaluation.")


def hold_lock(run_dir):
    """An exclusive lock on `run_dir` for this process (released when the returned file
    is closed or the process ends); a RunError if another process holds it."""
    import fcntl

    # Not a `with` block: the lock must outlive this function (the caller holds the file).
    lock = open(os.path.join(run_dir, ".lock"), "w")  # noqa: SIM115
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise RunError(f"{run_dir} is used by another `train` process; wait for it to end "
                       f"or train into another --out") from None
    return lock


def _flatten(values, prefix=""):
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


# What a finished run holds; its backup is removed after the last of them is written.
_FINAL = ("model.keras", "translator.keras", "summary.json", "tokenizer.model")


def _finished(run_dir):
    return all(os.path.exists(os.path.join(run_dir, name)) for name in _FINAL) \
        and not backups(os.path.join(run_dir, "backup"))


def _load_finished(run_dir, chief):
    """(model, tokenizer, summary) of a finished run, which is not trained again."""
    if chief:
        print(f"{run_dir} is trained already (model.keras); to train again, use another "
              f"--out", flush=True)
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = {**json.load(f), "chief": chief}
    model = keras.saving.load_model(os.path.join(run_dir, "model.keras"))
    return model, SubwordTokenizer.load(os.path.join(run_dir, "tokenizer.model")), summary


def _epochs(config, batches, num_workers):
    """(steps per epoch, target tokens per epoch or None, epochs) of a run.

    By default one unshuffled pass over the whole split fixes the epoch length (the same
    on every worker; a step takes a batch from each); training then reads an endless,
    reshuffled stream, `steps_per_epoch` steps an epoch. `training.steps_per_epoch`
    skips that pass (hours on a WMT-sized corpus); `training.max_steps` sets the epochs.
    """
    training = config.training
    if training.steps_per_epoch:
        steps_per_epoch, tokens_per_epoch = training.steps_per_epoch, None
    else:
        # With sampled segmentations this pass samples too: an epoch is then about one
        # pass over the split in the longer sampled sentences.
        steps, tokens_per_epoch = epoch_size(make_batches(
            corpus.split_pairs(config.data, "train"), cache=False,
            sampling_alpha=config.tokenizer.sampling_alpha, **batches))
        steps_per_epoch = max(1, steps // num_workers)
    # max_steps counts optimizer updates, each of accumulate_batches batches (fit steps).
    epochs = (math.ceil(training.max_steps * training.accumulate_batches / steps_per_epoch)
              if training.max_steps else training.epochs)
    return steps_per_epoch, tokens_per_epoch, epochs


def _no_worse(model, valid_data, final_weights):
    """Keep the averaged weights unless they validate worse than the last ones."""
    averaged_loss = model.evaluate(valid_data, verbose=0)[0]
    averaged_weights = model.get_weights()
    model.set_weights(final_weights)
    final_loss = model.evaluate(valid_data, verbose=0)[0]
    if averaged_loss <= final_loss:
        model.set_weights(averaged_weights)
        return True
    return False
