"""Exact gradient accumulation: one optimizer update from k batches' token-mean loss.

With `model.compile(..., accumulate_batches=k)` (k > 1) every optimizer update uses the
gradient of (sum of the token losses of k consecutive batches, on all replicas) / (their
total number of real target tokens): exactly the update of one k-times-larger batch,
which lets a run reach the paper's ~25,000 tokens per side per step on little memory.

`MaskedCrossEntropy` returns S_i / N_i for batch i (N_i: its real target tokens over all
replicas), so each batch's gradient is multiplied by N_i and added to per-replica sums;
on every k-th batch the optimizer applies (Σ_i N_i·g_i) / Σ_i N_i, and only then do the
replicas all-reduce (once per update, inside the optimizer as without accumulation).
`optimizer.iterations`, hence the learning-rate schedule, counts updates; the loss and
accuracy metrics still update every batch.

Keras' own `Optimizer(gradient_accumulation_steps=k)` (keras/src/optimizers/
base_optimizer.py, Keras 3.15) is not used: it applies the plain mean of the k batch
gradients, (Σ g_i) / k, which over-weights the tokens of short batches (token-budget
batches hold different numbers of real tokens); its learning-rate schedule reads the
batch counter (`_iterations`), so the warm-up would end k times too early; and under
MirroredStrategy its `cond` around `apply_gradients` runs in replica context, which
fails ("`merge_call` called while defining a new graph"). Scaling each batch's loss to
make its mean exact would need the k token counts before the first of the k batches.

The state (one float32 sum per trainable variable, the token and batch counts) lives
in per-replica (`on_read`) variables of a `GradientAccumulator` held by the model but
outside `model.weights`: `model.save_weights` / `model.save` store it (the sum over
replicas) and loading restores it, so a backup taken between two batches of an update
resumes exactly. A weights file without it (k = 1) loads with an empty accumulator.

Example: 3 batches of a 2-batch accumulation make one update, and one batch is pending.
>>> import keras, numpy as np
>>> from keras_transformer import Transformer, TransformerConfig, losses
>>> model = Transformer(TransformerConfig.from_preset("tiny", vocab_size=20))
>>> model.compile(optimizer="sgd", loss=losses.MaskedCrossEntropy(), accumulate_batches=2)
>>> ids = np.array([[3, 4, 5, 0], [6, 7, 0, 0], [8, 0, 0, 0]], dtype="int32")
>>> _ = model.fit((ids, ids), ids, batch_size=1, shuffle=False, verbose=0)
>>> int(model.optimizer.iterations), int(model.gradient_accumulator.batches.numpy())
(1, 1)
"""

import keras
import tensorflow as tf

from keras_transformer.losses import MaskedCrossEntropy, _global_sum


class GradientAccumulator(keras.layers.Layer):
    """Per-replica sums of token-count-weighted gradients of `variables` over up to
    `steps` batches, with the batches' token count and the number of batches so far.

    Not called on data: `accumulated_train_step` drives it. Made by `attach` (under the
    model's distribution strategy) when the model is compiled, so it is not serialized
    as a layer: the compile config records `accumulate_batches` instead.
    """

    def __init__(self, variables, steps, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.steps = int(steps)

        def state(shape, aggregation, name):
            # on_read: each replica adds its own values with no communication; reading
            # across replicas (saving) gives the sum ("sum") or the common value
            # ("mean"), and assigning (loading) splits / copies it back.
            return keras.Variable(keras.initializers.Zeros(), shape=shape, dtype="float32",
                                  trainable=False, aggregation=aggregation,
                                  synchronization="on_read", name=name)

        self.gradient_sums = [state(tuple(v.shape), "sum", f"sum_{i}")
                              for i, v in enumerate(variables)]
        self.tokens = state((), "mean", "tokens")  # Σ N_i (already global on each replica)
        self.batches = state((), "mean", "batches")  # batches since the last update
        self.built = True

    def add(self, gradients, tokens):
        """Add one batch: `gradients` of its loss S_i / N_i and its global count N_i."""
        for total, gradient in zip(self.gradient_sums, gradients):
            if gradient is not None:
                total.assign_add(tf.convert_to_tensor(gradient) * tokens)
        self.tokens.assign_add(tokens)
        self.batches.assign_add(1.0)

    def mean_gradients(self):
        """(Σ N_i·g_i) / Σ N_i of this replica's sums (the optimizer sums replicas)."""
        tokens = keras.ops.maximum(self.tokens.value, 1.0)
        return [total.value / tokens for total in self.gradient_sums]

    def reset(self):
        for variable in [*self.gradient_sums, self.tokens, self.batches]:
            variable.assign(keras.ops.zeros_like(variable.value))

    def load_own_variables(self, store):
        # A file saved without accumulation (or before it was turned on): start empty.
        if len(store.keys()) == 0:
            self.reset()
            return
        super().load_own_variables(store)


def attach(model, steps):
    """Give `model` (a compiled Keras model) a `GradientAccumulator` for `steps` > 1
    batches an update, or none for `steps` == 1. Called by `Transformer.compile`."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"accumulate_batches must be an integer >= 1, got {steps!r}")
    accumulator = None
    if steps > 1:
        if not isinstance(model.loss, MaskedCrossEntropy):
            raise ValueError("accumulate_batches > 1 needs the loss MaskedCrossEntropy "
                             f"(a token mean whose token count it knows), got {model.loss!r}")
        with model.distribute_strategy.scope():
            accumulator = GradientAccumulator(model.trainable_variables, steps,
                                              name="gradient_accumulator")
    # Past Keras' attribute tracking (the built model accepts no new layer) and past
    # TensorFlow's (exported SavedModels do not carry the sums): Keras saving still finds
    # the attribute, so `save_weights` and `save` store the state.
    object.__setattr__(model, "gradient_accumulator", accumulator)


def accumulated_train_step(model, data):
    """`keras.Model.train_step` (TensorFlow backend) with the update every k-th call.

    Forward pass, loss, loss tracking and metrics as in Keras' own `train_step`; the
    gradient goes to the accumulator instead of the optimizer.
    """
    accumulator = model.gradient_accumulator
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    with tf.GradientTape() as tape:
        y_pred = model(x, training=True)
        loss = model.compute_loss(x, y, y_pred, sample_weight, training=True)
        # As Keras' train_step (`unscale_loss_for_distribution`): the same logged loss
        # as with k = 1.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        model._loss_tracker.update_state(
            loss * replicas if replicas > 1 else loss,
            sample_weight=tf.shape(tf.nest.flatten(x)[0])[0])
        loss = model.optimizer.scale_loss(loss)
    variables = model.trainable_variables
    gradients = tape.gradient(loss, variables)
    mask = tf.cast(tf.not_equal(y, model.loss.pad_id), "float32")
    accumulator.add(gradients, _global_sum(tf.reduce_sum(mask)))

    def update():
        model.optimizer.apply_gradients(zip(accumulator.mean_gradients(), variables))
        accumulator.reset()

    ready = accumulator.batches.value >= accumulator.steps
    if tf.__internal__.distribute.strategy_supports_no_merge_call():
        tf.cond(ready, update, lambda: None)
    else:
        # As Keras' LossScaleOptimizer: a cond whose branch synchronizes the replicas
        # (`apply_gradients` calls `merge_call`) must run in cross-replica context, and
        # its branch goes back to each replica. Every replica has the same `ready`.
        def cross_replica(distribution, ready):
            tf.cond(distribution.experimental_local_results(ready)[0],
                    lambda: distribution.extended.call_for_each_replica(update),
                    lambda: None)

        tf.distribute.get_replica_context().merge_call(cross_replica, args=(ready,))
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
