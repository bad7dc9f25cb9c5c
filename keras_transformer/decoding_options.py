"""How to decode: one frozen object instead of four loose arguments.

Example:
>>> options = DecodingOptions(beam_size=4, alpha=0.6)
>>> options.replace(beam_size=1).beam_size
1
>>> options.replace(beam_size=None) == options     # None keeps the current value
True
>>> DecodingOptions.from_dict(options.to_dict()) == options
True
>>> DecodingOptions(beam_size=0)
Traceback (most recent call last):
...
ValueError: DecodingOptions: beam_size must be an integer >= 1, got 0
>>> DecodingOptions(stopping="early")
Traceback (most recent call last):
...
ValueError: DecodingOptions: stopping must be one of ('exact', 'first', 'full'), got 'early'
"""

import dataclasses

# When beam search stops a sentence (see `keras_transformer.decoding.beam_search`).
STOPPING = ("exact", "first", "full")
# The weights of the decoding step's dense products (see `keras_transformer.quantization`).
WEIGHTS = ("float32", "int8")


@dataclasses.dataclass(frozen=True)
class DecodingOptions:
    """Beam size, length penalty and output lengths of a decoder (§6.1).

    Args:
        beam_size: 1 decodes greedily; k > 1 keeps k hypotheses per sentence.
        alpha: GNMT length penalty exponent, ((5 + length) / 6)^alpha (beam search only).
        max_extra_length: a translation stops after source length + this many tokens.
        max_output_length: the static output (and cache) length of an exported decoder.
        stopping: when beam search stops a sentence: "exact" once no live hypothesis can
            beat its best finished one, "first" also at the first step whose best
            extension ends it, "full" also once it holds beam_size finished hypotheses
            (fewer steps; see `decoding.beam_search`).
        weights: "float32", or "int8" to run each decoding step's dense products on int8
            operands (`keras_transformer.quantization`; faster on CPUs with VNNI or AMX).
    """

    beam_size: int = 4
    alpha: float = 0.6
    max_extra_length: int = 50
    max_output_length: int = 128
    stopping: str = "exact"
    weights: str = "float32"

    def __post_init__(self):
        for name, low in (("beam_size", 1), ("max_extra_length", 0), ("max_output_length", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"DecodingOptions: {name} must be an integer >= {low}, "
                                 f"got {value!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) \
                or not self.alpha >= 0:
            raise ValueError(f"DecodingOptions: alpha must be a number >= 0, got {self.alpha!r}")
        object.__setattr__(self, "alpha", float(self.alpha))
        if self.stopping not in STOPPING:
            raise ValueError(f"DecodingOptions: stopping must be one of {STOPPING}, "
                             f"got {self.stopping!r}")
        if self.weights not in WEIGHTS:
            raise ValueError(f"DecodingOptions: weights must be one of {WEIGHTS}, "
                             f"got {self.weights!r}")

    def replace(self, **changes):
        """A copy with `changes` applied; a change of None keeps the current value."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        """From a dict (e.g. a saved config); unknown keys are a ValueError."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"DecodingOptions: unknown option(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        return cls(**values)
