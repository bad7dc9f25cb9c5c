"""Model hyper-parameters and the presets of Table 3 of the paper."""

import dataclasses
import typing
from typing import Optional


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of an encoder-decoder Transformer.

    Field names follow the paper: `d_model`, `d_ff`, `num_heads` (h) and the number of
    layers N for each stack. `dropout` is P_drop (residual and embedding dropout, §5.4),
    `label_smoothing` is ε_ls. Attention and activation dropout are extras (0 in the paper).

    Example:
    >>> config = TransformerConfig.from_preset("base", vocab_size=37000)
    >>> config.d_model, config.num_heads
    (512, 8)
    """

    vocab_size: int = 8000
    target_vocab_size: Optional[int] = None  # None: one shared vocabulary.
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    d_model: int = 512
    num_heads: int = 8
    d_ff: int = 2048
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    label_smoothing: float = 0.1
    norm_first: bool = False  # False: post-LN as in the paper; True: pre-LN.
    share_embeddings: bool = True  # One matrix for source and target embeddings (§3.4).
    tie_embeddings: bool = True  # Pre-softmax projection uses the target embedding (§3.4).
    layer_norm_epsilon: float = 1e-6
    pad_id: int = 0

    def __post_init__(self):
        # Types first: a string from a YAML file would otherwise fail later with an
        # unrelated message (or, for `%`, format a string). Messages start with the key.
        check_field_types(self)
        for name in ("vocab_size", "num_encoder_layers", "num_decoder_layers", "d_model",
                     "num_heads", "d_ff", "layer_norm_epsilon"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if self.target_vocab_size is not None and self.target_vocab_size <= 0:
            raise ValueError(f"target_vocab_size must be positive, got {self.target_vocab_size}.")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})."
            )
        for name in ("dropout", "attention_dropout", "activation_dropout", "label_smoothing"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}.")
        if self.share_embeddings and self.target_vocab_size not in (None, self.vocab_size):
            raise ValueError("share_embeddings needs one vocabulary: unset target_vocab_size.")

    @property
    def output_vocab_size(self) -> int:
        return self.target_vocab_size or self.vocab_size

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def num_parameters(self) -> int:
        """Trainable parameters, in closed form (matches `Transformer(config).count_params()`)."""
        d, f = self.d_model, self.d_ff
        attention = 4 * (d * d + d)  # W_Q, W_K, W_V, W_O with biases
        feed_forward = 2 * d * f + f + d
        norm = 2 * d  # gain and bias
        encoder = self.num_encoder_layers * (attention + feed_forward + 2 * norm)
        decoder = self.num_decoder_layers * (2 * attention + feed_forward + 3 * norm)
        final_norms = 2 * norm if self.norm_first else 0
        embeddings = self.vocab_size * d
        if not self.share_embeddings:
            embeddings += self.output_vocab_size * d
        if not self.tie_embeddings:
            embeddings += self.output_vocab_size * d
        return encoder + decoder + final_norms + embeddings

    def replace(self, **changes) -> "TransformerConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TransformerConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown TransformerConfig keys: {', '.join(unknown)}.")
        return cls(**values)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "TransformerConfig":
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})


def _type_name(kind):
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        kind, getattr(kind, "__name__", str(kind)))


def check_field_types(instance):
    """Raise ValueError("<field> must be <type>, got <value>") for the first dataclass field of
    `instance` whose value does not match its annotation (int, float, bool, str, Optional[...]).

    A bool is not accepted as a number (YAML `yes` is a bool), an int is accepted as a float.
    """
    for field in dataclasses.fields(instance):
        kind, value = field.type, getattr(instance, field.name)
        if typing.get_origin(kind) is typing.Union:  # Optional[X]
            if value is None:
                continue
            kind = next(k for k in typing.get_args(kind) if k is not type(None))
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(kind, type):
            ok = isinstance(value, kind)
        else:
            continue
        if not ok:
            raise ValueError(f"{field.name} must be {_type_name(kind)}, got {value!r}")


# Table 3: "base" and "big" (P_drop 0.3 is the EN-DE big setting). "small" suits
# Multi30k-sized corpora on a CPU; "tiny" keeps tests fast.
PRESETS = {
    "base": dict(num_encoder_layers=6, num_decoder_layers=6, d_model=512, num_heads=8,
                 d_ff=2048, dropout=0.1, label_smoothing=0.1),
    "big": dict(num_encoder_layers=6, num_decoder_layers=6, d_model=1024, num_heads=16,
                d_ff=4096, dropout=0.3, label_smoothing=0.1),
    "small": dict(num_encoder_layers=3, num_decoder_layers=3, d_model=256, num_heads=4,
                  d_ff=1024, dropout=0.1, label_smoothing=0.1),
    "tiny": dict(num_encoder_layers=2, num_decoder_layers=2, d_model=32, num_heads=2,
                 d_ff=64, dropout=0.0, label_smoothing=0.0),
}
