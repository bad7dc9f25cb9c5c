"""Run configuration: a YAML file with `model`, `data`, `tokenizer`, `training` and
`evaluation` sections. Unknown sections or keys are errors that name the key."""

import dataclasses
import sys
from typing import ClassVar, Optional

import yaml

from keras_transformer.config import PRESETS, TransformerConfig, check_field_types
from keras_transformer.decoding_options import STOPPING, WEIGHTS, DecodingOptions
from keras_transformer.errors import UsageError

SOURCES = ("multi30k", "text", "tfds")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
MIXED_PRECISION = ("none", "auto", "mixed_bfloat16", "mixed_float16")
SPECIAL_TOKENS = 4  # pad, unk, bos, eos (keras_transformer.tokenizer)


class ConfigError(UsageError):
    """A configuration file that cannot be used; the message names the file and key."""


class RunError(UsageError):
    """A run directory that cannot be used as asked (e.g. it has no trained model); the
    message says what to do instead."""


def at_least(low):
    return lambda value: value >= low, f">= {low}"


def one_of(*choices):
    return lambda value: value in choices, f"one of {', '.join(choices)}"


class _Validated:
    """Checks a section when it is created: field types from the annotations, then the
    class's RULES, `{field: (predicate, requirement)}` (None values of Optional fields
    are not checked). A failure is a ValueError whose message starts with the field name,
    which `_section` prefixes with the file and section."""

    RULES: ClassVar[dict] = {}

    def __post_init__(self):
        check_field_types(self)
        for name, (ok, requirement) in self.RULES.items():
            value = getattr(self, name)
            if value is not None and not ok(value):
                raise ValueError(f"{name} must be {requirement}, got {value!r}")


@dataclasses.dataclass
class DataConfig(_Validated):
    source: str = "multi30k"  # multi30k | text | tfds
    source_lang: str = "en"
    target_lang: str = "de"
    max_length: int = 128  # subword tokens per side; longer pairs are dropped in training
    # For source: text: a file (plain or .gz) or a glob of shards, e.g. train.*.en.gz;
    # the sorted source shards pair with the sorted target shards one to one.
    train_source: Optional[str] = None
    train_target: Optional[str] = None
    valid_source: Optional[str] = None
    valid_target: Optional[str] = None
    test_source: Optional[str] = None
    test_target: Optional[str] = None
    tfds_name: Optional[str] = None  # for source: tfds, e.g. wmt14_translate/de-en
    tfds_data_dir: Optional[str] = None
    train_split: str = "train"
    valid_split: str = "validation"
    test_split: str = "test"
    train_limit: Optional[int] = None  # use only the first N training pairs (smoke runs)
    # Keep the tokenized train split in memory after the first epoch; null: only for
    # small corpora (Multi30k, train_limit, text files under 256 MB; training/corpus.py).
    cache_tokens: Optional[bool] = None

    RULES: ClassVar[dict] = {"source": one_of(*SOURCES), "max_length": at_least(1),
                             "train_limit": at_least(1)}


@dataclasses.dataclass
class TokenizerConfig(_Validated):
    vocab_size: int = 8000
    # SentencePiece learns from at most this many training sentences (both languages),
    # a random sample seeded by training.seed, streamed from the corpus.
    sample_sentences: int = 2_000_000
    # Subword regularization (Kudo 2018): training reads each sentence in a segmentation
    # sampled afresh every epoch, probabilities to this power (SubwordTokenizer.sampler):
    # the smaller, the finer and more varied (more tokens an epoch: the plan prints them).
    # null: the best segmentation always. Validation and translation always use the best.
    sampling_alpha: Optional[float] = None

    # The vocabulary must hold more than the special tokens.
    RULES: ClassVar[dict] = {
        "vocab_size": (lambda value: value > SPECIAL_TOKENS,
                       f"> {SPECIAL_TOKENS} (the special tokens pad, unk, bos, eos)"),
        "sample_sentences": (lambda value: value > 100, "> 100 (SentencePiece's minimum)"),
        "sampling_alpha": (lambda value: value > 0, "> 0")}


@dataclasses.dataclass
class TrainingConfig(_Validated):
    epochs: int = 30
    batch_tokens: int = 4096  # per side, padding included (the paper used ~25,000)
    # Batches per optimizer update: k > 1 adds up the gradients of k batches and applies
    # their exact token mean (keras_transformer/accumulation.py), so an update sees
    # k * batch_tokens tokens on the memory of one batch (the paper's 25k per side:
    # e.g. batch_tokens 6250, accumulate_batches 4). warmup_steps and max_steps count
    # updates (optimizer.iterations), as does checkpoint_every; steps_per_epoch counts
    # batches.
    accumulate_batches: int = 1
    warmup_steps: int = 4000
    learning_rate_scale: float = 1.0
    # Decoupled weight decay (not in the paper): every update also shrinks the weight
    # matrices and embeddings by weight_decay x the learning rate (biases and layer norms
    # excepted; keras_transformer/schedules.py, paper_optimizer). 0: off.
    weight_decay: float = 0.0
    # After warm-up: inverse_sqrt (the paper's eq. 3) or cosine, a decay to zero at the
    # run's last update (epochs x steps per epoch, or max_steps). A time budget that stops
    # the run first leaves the cosine short of zero.
    decay: str = "inverse_sqrt"
    shuffle_buffer: int = 30000
    strategy: str = "default"  # default | mirrored | multi_worker | tpu
    devices: Optional[int] = None  # mirrored: split the CPU into this many logical devices
    # auto: mixed_bfloat16 on CPUs with native bf16, else float32 (training/precision.py)
    mixed_precision: str = "none"  # auto | none | mixed_bfloat16 | mixed_float16
    jit_compile: object = False  # true | false | auto (XLA where the precision gains from it)
    checkpoint_every: int = 1000  # optimizer steps between kept checkpoints (for averaging)
    average_last: int = 5  # average this many last checkpoints at the end (0: off)
    seed: int = 0
    # Stop once this many minutes of `fit` are used (mid-epoch; the last validation pass
    # still runs); None trains all `epochs`. Keeps a run's wall time bounded on slower
    # machines; the steps it trained are in summary.json.
    time_budget_minutes: Optional[float] = None
    # With decay cosine and a time budget: the cosine reaches zero when the budget ends
    # instead of after `epochs` (which becomes the most the run may train). After every
    # epoch the run re-plans its last update from the pace measured so far
    # (training/progress.py, BudgetedDecay), so a faster machine trains longer and a
    # slower one still finishes its decay. The plan follows the clock: two runs of one
    # config need not take the same number of steps.
    schedule_to_budget: bool = False
    # Step-based runs for corpora where one pass takes hours: an "epoch" (validation,
    # the backup a killed run resumes from, a history row) every `steps_per_epoch` steps
    # instead of one counted pass over the corpus, and `max_steps` in all (the paper: 100k
    # for base) instead of `epochs`. None: count one pass / train `epochs` epochs.
    steps_per_epoch: Optional[int] = None
    max_steps: Optional[int] = None
    # How a killed run's data stream resumes (training/backup.py). exact: the seeded
    # stream skipped forward by the batches taken, so the run ends as if never killed;
    # the skip runs the input pipeline (~12 ms a batch here, bench/resume_skip.py: 36 s
    # after the main job's 3,000 steps, ~20 min after 100k such batches). reshuffle: a
    # stream seeded afresh, nothing skipped (weights, optimizer, schedule and dropout
    # seeds still restored exactly).
    resume: str = "exact"

    RULES: ClassVar[dict] = {
        "epochs": at_least(1), "batch_tokens": at_least(1), "warmup_steps": at_least(1),
        "accumulate_batches": at_least(1),
        "learning_rate_scale": (lambda value: value > 0, "> 0"),
        "weight_decay": at_least(0),
        "decay": one_of("inverse_sqrt", "cosine"),
        "shuffle_buffer": at_least(0), "strategy": one_of(*STRATEGIES),
        "resume": one_of("exact", "reshuffle"),
        "devices": at_least(1), "mixed_precision": one_of(*MIXED_PRECISION),
        "checkpoint_every": at_least(1),
        "average_last": at_least(0),
        "time_budget_minutes": (lambda value: value > 0, "> 0"),
        "schedule_to_budget": (lambda value: value is True or value is False, "true or false"),
        "steps_per_epoch": at_least(1), "max_steps": at_least(1),
        # `is`: 0 and 1 compare equal to False and True but are not YAML booleans.
        "jit_compile": (lambda value: value is True or value is False or value == "auto",
                        "true, false or auto"),
    }


@dataclasses.dataclass
class EvaluationConfig(_Validated):
    beam_size: int = 4
    alpha: float = 0.6
    max_extra_length: int = 50  # max output length = source length + this (§6.1)
    batch_size: int = 64
    lowercase: bool = False
    stopping: str = "exact"  # when beam search stops a sentence (DecodingOptions)
    weights: str = "float32"  # int8: the decoding steps' products on int8 (DecodingOptions)

    RULES: ClassVar[dict] = {"beam_size": at_least(1), "alpha": at_least(0),
                             "max_extra_length": at_least(0), "batch_size": at_least(1),
                             "stopping": one_of(*STOPPING), "weights": one_of(*WEIGHTS)}

    def decoding_options(self, **changes):
        """These settings as `DecodingOptions` (with `changes`, e.g. max_output_length)."""
        return DecodingOptions(self.beam_size, self.alpha, self.max_extra_length,
                               stopping=self.stopping, weights=self.weights).replace(**changes)


@dataclasses.dataclass
class RunConfig:
    model: TransformerConfig
    model_preset: str
    data: DataConfig
    tokenizer: TokenizerConfig
    training: TrainingConfig
    evaluation: EvaluationConfig

    def to_dict(self):
        model = {"preset": self.model_preset, **self.model.to_dict()}
        return {"model": model, **{name: dataclasses.asdict(getattr(self, name))
                                   for name in ("data", "tokenizer", "training", "evaluation")}}


SECTIONS = {"data": DataConfig, "tokenizer": TokenizerConfig, "training": TrainingConfig,
            "evaluation": EvaluationConfig}


# Keys earlier versions wrote into a run's config.yaml that no longer do anything: such a run
# must still resume, evaluate and export, so they are dropped with a note, not refused.
RETIRED = {("training", "backup_every"): "backups are taken at every epoch end"}


def _section(cls, values, where, section, make=None, also_known=()):
    """A `cls` made by `make(**values)` (default: `cls`) from a mapping; errors name
    `where: section.key`."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: {section}: expected a mapping of keys, got {values!r}")
    for key in [key for key in values if (section, key) in RETIRED]:
        print(f"{where}: {section}.{key} is no longer used ({RETIRED[section, key]})",
              file=sys.stderr)
        values = {k: v for k, v in values.items() if k != key}
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(f"{where}: {section}: unknown key {key!r} "
                              f"(known: {', '.join([*also_known, *sorted(known)])})")
    try:
        return (make or cls)(**values)
    except (TypeError, ValueError) as e:
        # The dataclass checks raise messages that start with the field name.
        raise ConfigError(f"{where}: {section}.{e}") from None


def _model_config(values, vocab_size, where):
    """(preset, TransformerConfig) of the `model` section (a preset plus overrides)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: model: expected a mapping of keys, got {values!r}")
    model = dict(values)
    preset = model.pop("preset", "small")
    if preset not in PRESETS:
        raise ConfigError(f"{where}: model.preset must be one of {', '.join(PRESETS)}, "
                          f"got {preset!r}")

    def make(**overrides):
        return TransformerConfig.from_preset(preset, **{"vocab_size": vocab_size, **overrides})

    return preset, _section(TransformerConfig, model, where, "model", make, ("preset",))


def parse_config(values, where="config"):
    """A RunConfig from a nested dict (as read from YAML); every error names `section.key`."""
    values = dict(values or {})
    for key in values:
        if key not in ("model", *SECTIONS):
            raise ConfigError(f"{where}: unknown section {key!r}")
    # Sections first: the model's vocabulary comes from a validated tokenizer section.
    sections = {name: _section(cls, values.get(name) or {}, where, name)
                for name, cls in SECTIONS.items()}
    training = sections["training"]
    if training.strategy == "multi_worker" and training.time_budget_minutes:
        # Each worker would stop by its own clock, at a different step, and the others
        # would wait for it in their next all-reduce.
        raise ConfigError(f"{where}: training.time_budget_minutes cannot bound a "
                          f"multi_worker run (workers would stop at different steps); "
                          f"set training.max_steps")
    if training.schedule_to_budget and not (training.decay == "cosine"
                                            and training.time_budget_minutes):
        raise ConfigError(f"{where}: training.schedule_to_budget needs training.decay: "
                          f"cosine and a training.time_budget_minutes to end it at")
    if training.strategy == "multi_worker" and training.accumulate_batches > 1:
        # The chief alone saves backups and checkpoints; reading the per-replica gradient
        # sums for them would be a collective the other workers never join.
        raise ConfigError(f"{where}: training.accumulate_batches > 1 is not supported with "
                          f"a multi_worker strategy yet; raise training.batch_tokens or "
                          f"add workers")
    preset, model_config = _model_config(values.get("model") or {},
                                         sections["tokenizer"].vocab_size, where)
    return RunConfig(model=model_config, model_preset=preset, **sections)


def load_config(path):
    """Read and validate a YAML run configuration."""
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of sections")
    return parse_config(values, where=path)


def save_config(config, path):
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config.to_dict(), f, sort_keys=False)
