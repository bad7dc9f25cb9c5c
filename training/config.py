"""Run configuration: a YAML file with `model`, `data`, `tokenizer`, `training` and
`evaluation` sections. Unknown sections or keys are errors that name the key."""

import dataclasses
from typing import Optional

import yaml

from keras_transformer.config import TransformerConfig


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and key."""


@dataclasses.dataclass
class DataConfig:
    source: str = "multi30k"  # multi30k | text | tfds
    source_lang: str = "en"
    target_lang: str = "de"
    max_length: int = 128  # subword tokens per side; longer pairs are dropped in training
    train_source: Optional[str] = None  # for source: text (plain or .gz files)
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


@dataclasses.dataclass
class TokenizerConfig:
    vocab_size: int = 8000


@dataclasses.dataclass
class TrainingConfig:
    epochs: int = 30
    batch_tokens: int = 4096  # per side, padding included (the paper used ~25,000)
    warmup_steps: int = 4000
    learning_rate_scale: float = 1.0
    shuffle_buffer: int = 30000
    strategy: str = "default"  # default | mirrored | multi_worker | tpu
    devices: Optional[int] = None  # mirrored: split the CPU into this many logical devices
    mixed_precision: str = "none"  # none | mixed_bfloat16 | mixed_float16
    jit_compile: bool = False
    checkpoint_every: int = 1000  # steps between kept checkpoints (for averaging)
    backup_every: int = 200  # steps between BackupAndRestore snapshots
    average_last: int = 5  # average this many last checkpoints at the end (0: off)
    seed: int = 0


@dataclasses.dataclass
class EvaluationConfig:
    beam_size: int = 4
    alpha: float = 0.6
    max_extra_length: int = 50  # max output length = source length + this (§6.1)
    batch_size: int = 64
    lowercase: bool = False


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


def _section(cls, values, where):
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def parse_config(values, where="config"):
    """A RunConfig from a nested dict (as read from YAML)."""
    values = dict(values or {})
    for key in values:
        if key not in ("model", *SECTIONS):
            raise ConfigError(f"{where}: unknown section {key!r}")
    model = dict(values.get("model") or {})
    preset = model.pop("preset", "small")
    vocab = (values.get("tokenizer") or {}).get("vocab_size", TokenizerConfig.vocab_size)
    try:
        model_config = TransformerConfig.from_preset(preset, **{"vocab_size": vocab, **model})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: model: {e}") from None
    sections = {name: _section(cls, values.get(name) or {}, f"{where}: {name}")
                for name, cls in SECTIONS.items()}
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
