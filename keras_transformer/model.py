"""The encoder-decoder Transformer (§3, fig. 1) as a `keras.Model`."""

import keras
from keras import ops

# Imported for their registrations: a saved model's compile config names our loss, metric
# and learning-rate schedule, which `keras.models.load_model` must find in a fresh process.
from keras_transformer import accumulation, losses, schedules  # noqa: F401
from keras_transformer import quantization
from keras_transformer.config import TransformerConfig
from keras_transformer.layers.attention import visible_entries
from keras_transformer.layers.decoder import TransformerDecoder
from keras_transformer.layers.dropout import Dropout
from keras_transformer.layers.embedding import TokenEmbedding
from keras_transformer.layers.encoder import TransformerEncoder
from keras_transformer.layers.positional_encoding import SinusoidalPositionalEncoding, sinusoids
from keras_transformer.masks import padding_mask


@keras.saving.register_keras_serializable(package="keras_transformer")
class Transformer(keras.Model):
    """Encoder-decoder Transformer returning next-token logits.

    `model((source_ids, target_in_ids))` maps int ids `[batch, src_len]` and
    `[batch, tgt_len]` (pad id `config.pad_id`) to float32 logits
    `[batch, tgt_len, output_vocab_size]`. Position i of the logits predicts target
    token i + 1 (teacher forcing). For decoding, `encode` once, then `init_cache` and
    `decode_step` per token; see `keras_transformer.decoding`.

    Example:
    >>> model = Transformer(TransformerConfig.from_preset("tiny", vocab_size=50))
    >>> src = keras.ops.convert_to_tensor([[4, 5, 6, 0]])
    >>> tgt = keras.ops.convert_to_tensor([[1, 7, 8]])
    >>> tuple(model((src, tgt)).shape)
    (1, 3, 50)
    """

    def __init__(self, config=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(config, dict):
            config = TransformerConfig.from_dict(config)
        self.config = config = config or TransformerConfig()
        policy = self.dtype_policy
        stack_kwargs = dict(
            num_heads=config.num_heads, d_ff=config.d_ff, dropout=config.dropout,
            attention_dropout=config.attention_dropout,
            activation_dropout=config.activation_dropout, norm_first=config.norm_first,
            layer_norm_epsilon=config.layer_norm_epsilon, dtype=policy,
        )
        self.source_embedding = TokenEmbedding(
            config.vocab_size, config.d_model, config.pad_id, name="source_embedding", dtype=policy
        )
        self.separate_target_embedding = None
        if not config.share_embeddings:
            self.separate_target_embedding = TokenEmbedding(
                config.output_vocab_size, config.d_model, config.pad_id,
                name="target_embedding", dtype=policy,
            )
        self.positional_encoding = SinusoidalPositionalEncoding(dtype=policy)
        self.embedding_dropout = Dropout(config.dropout, dtype=policy)
        self.encoder = TransformerEncoder(config.num_encoder_layers, name="encoder", **stack_kwargs)
        self.decoder = TransformerDecoder(config.num_decoder_layers, name="decoder", **stack_kwargs)
        self.output_projection = None
        if not config.tie_embeddings:
            self.output_projection = keras.layers.Dense(
                config.output_vocab_size, use_bias=False, name="output_projection", dtype=policy
            )
        self.build(((None, None), (None, None)))

    @property
    def target_embedding(self):
        return self.separate_target_embedding or self.source_embedding

    def build(self, input_shape=None):
        hidden = (None, None, self.config.d_model)
        self.source_embedding.build()
        if self.separate_target_embedding is not None:
            self.separate_target_embedding.build()
        self.encoder.build(hidden)
        self.decoder.build(hidden, hidden)
        if self.output_projection is not None:
            self.output_projection.build(hidden)
        self.built = True

    # Set by `compile`: None, or the `accumulation.GradientAccumulator` of an update
    # made of `accumulate_batches` > 1 batches.
    gradient_accumulator = None

    def compile(self, *args, accumulate_batches=1, **kwargs):
        """`keras.Model.compile`, then the optimizer's slot variables are created at once.

        Without a distribution strategy Keras creates them while tracing the first
        training step, and a `tf.function` that creates variables is traced a second
        time: the first step of the "base" preset took 39 s instead of 20 s here.

        `accumulate_batches=k` > 1: each optimizer update uses the exact token-mean
        gradient of k consecutive batches (see `keras_transformer.accumulation`).
        """
        super().compile(*args, **kwargs)
        if self.optimizer is not None:
            self.optimizer.build(self.trainable_variables)
        accumulation.attach(self, accumulate_batches)

    def get_compile_config(self):
        config = super().get_compile_config()
        if config is not None and self.gradient_accumulator is not None:
            config["accumulate_batches"] = self.gradient_accumulator.steps
        return config

    def train_step(self, data):
        if self.gradient_accumulator is None:
            return super().train_step(data)
        return accumulation.accumulated_train_step(self, data)

    def compile_from_config(self, config):
        # Keras declines to re-compile a loaded model whose class overrides `compile`;
        # this one only adds the optimizer build, so a loaded `.keras` file compiles as
        # saved (and its optimizer state is restored into the built slots).
        self.compile(**keras.saving.deserialize_keras_object(config))

    def call(self, inputs, training=None):
        source_ids, target_ids = _unpack(inputs)
        memory, source_mask = self.encode(source_ids, training=training)
        return self.decode(target_ids, memory, source_mask, training=training)

    def with_dtype(self, dtype="float32"):
        """This model computing in `dtype` (a Keras dtype policy name): itself when it
        already does, else a copy of its architecture and weights (no optimizer state).

        A run may train in mixed_bfloat16 on a CPU with native bf16; what is scored and
        shipped computes in float32: TFLite has no bf16 kernels (a mixed model's export
        failed with unsupported AddV2, MatMul, ... ops), and float32 gives the same
        translations on every CPU.

        Example:
        >>> mixed = Transformer(TransformerConfig.from_preset("tiny", vocab_size=50),
        ...                     dtype="mixed_bfloat16")
        >>> mixed.with_dtype("float32").compute_dtype
        'float32'
        """
        if self.dtype_policy.name == dtype:
            return self
        copy = Transformer.from_config({**self.get_config(), "dtype": dtype})
        copy.set_weights(self.get_weights())
        return copy

    def encode(self, source_ids, training=None, return_attention_scores=False):
        """Run the encoder. Returns `(memory [batch, src_len, d_model], source_mask)`
        (plus per-layer self-attention weights if asked)."""
        source_mask = padding_mask(source_ids, self.config.pad_id)
        x = self._embed(self.source_embedding, source_ids, training)
        outputs = self.encoder(x, mask=source_mask, training=training,
                               return_attention_scores=return_attention_scores)
        if return_attention_scores:
            return outputs[0], source_mask, outputs[1]
        return outputs, source_mask

    def decode(self, target_ids, memory, source_mask, training=None,
               return_attention_scores=False):
        """Logits for every target position given the encoder output (teacher forcing)."""
        x = self._embed(self.target_embedding, target_ids, training)
        outputs = self.decoder(
            x, memory, x_mask=padding_mask(target_ids, self.config.pad_id),
            memory_mask=source_mask, training=training,
            return_attention_scores=return_attention_scores,
        )
        if return_attention_scores:
            return self._logits(outputs[0]), outputs[1]
        return self._logits(outputs)

    def attention_scores(self, source_ids, target_ids):
        """All attention weights of a teacher-forced pass, for visualisation.

        Returns a dict: "encoder" (list per layer of `[batch, heads, src, src]`),
        "decoder_self" (`[batch, heads, tgt, tgt]`) and "cross" (`[batch, heads, tgt, src]`).
        """
        memory, source_mask, encoder_weights = self.encode(source_ids,
                                                           return_attention_scores=True)
        _, decoder_weights = self.decode(target_ids, memory, source_mask,
                                         return_attention_scores=True)
        return {
            "encoder": encoder_weights,
            "decoder_self": [w["self"] for w in decoder_weights],
            "cross": [w["cross"] for w in decoder_weights],
        }

    def init_cache(self, memory, max_length, beam_size=1):
        """Preallocated per-layer decoding cache for up to `max_length` target tokens
        (`beam_size` hypotheses a sentence)."""
        return self.decoder.init_cache(memory, max_length, beam_size)

    def step_kernels(self, weights="float32"):
        """Decoder weights reshaped for `decode_step`; prepare once before a decoding loop.

        Optional (`decode_step` prepares them itself when not given), but reshaping the
        attention kernels inside an XLA loop made each step several times slower on CPU.
        `weights="int8"`: the decoder's matrices and the output projection quantized
        (`keras_transformer.quantization`); the embedding lookup stays float.
        """
        if self.output_projection is not None:
            logits = self.output_projection.kernel
        else:  # [vocab, d] → [d, vocab]: a transposed operand was ~5x slower at batch 4
            logits = ops.transpose(self.target_embedding.embeddings)
        return {"decoder": self.decoder.step_kernels(weights),
                "logits": quantization.prepare(logits, weights)}

    def decode_step(self, token_ids, index, cache, source_mask, kernels=None, ancestry=None):
        """Logits `[batch, vocab]` for position `index + 1` given the token at `index`.

        `token_ids` is `[batch]` (beam search: `[sentences · beams]`); `cache` comes from
        `init_cache` or a previous step; `kernels` from `step_kernels()`; `ancestry`
        (beam search): int `[sentences, beams, ≥ capacity]`, the beam whose cache entries
        hold each hypothesis' history at each slot, its own at `index`
        (`attention.visible_entries`; default: each beam its own). Returns
        `(logits, new_cache)`; equal to `decode` on the whole prefix.
        """
        x = self.target_embedding(ops.expand_dims(token_ids, 1))
        beams = ops.shape(token_ids)[0] // ops.shape(cache[0]["key"])[0]
        capacity = ops.shape(cache[0]["key"])[2] // beams
        # Take row `index` of the whole (constant-folded) table: computing sin/cos of the
        # dynamic position inside the decoding loop cost ~1 ms a step under XLA on CPU.
        table = sinusoids(capacity, self.config.d_model, dtype=x.dtype)
        x = x + ops.expand_dims(ops.take(table, ops.expand_dims(index, 0), axis=0), 0)
        if kernels is None:
            kernels = self.step_kernels()
        visible = None if ancestry is None else visible_entries(ancestry[:, :, :capacity], index)
        x, cache, _ = self.decoder.step(x, cache, index, source_mask, kernels["decoder"], visible)
        logits = quantization.matmul(x[:, 0], kernels["logits"])
        return ops.cast(logits, "float32"), cache

    def _embed(self, embedding, ids, training):
        x = self.positional_encoding(embedding(ids))
        return self.embedding_dropout(x, training=training)

    def _logits(self, x):
        if self.output_projection is not None:
            # The kernel, not the layer call: a called Dense passes the decoder's padding
            # mask on to the logits, and Keras then re-reduces the loss as masked values,
            # dividing it by the number of replicas under a tf.distribute strategy (the
            # loss is already a global token mean): untied models trained at half the rate.
            logits = ops.matmul(x, ops.cast(self.output_projection.kernel, x.dtype))
        else:
            logits = self.target_embedding.project(x)
        return ops.cast(logits, "float32")

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "config": self.config.to_dict(),
        }


def _unpack(inputs):
    if isinstance(inputs, dict):
        return inputs["source_ids"], inputs["target_ids"]
    source_ids, target_ids = inputs
    return source_ids, target_ids
