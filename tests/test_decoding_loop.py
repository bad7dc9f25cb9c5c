"""The decoding loop's batch compaction, on a synthetic step with known settling times."""

import numpy as np
import pytest
import tensorflow as tf

from keras_transformer import decoding_loop

BEAM, HEADS, DEPTH, SOURCE = 2, 1, 3, 4


def _run(settle_at, max_length, compact, jit_compile):
    """Sentence i settles once t >= settle_at[i]. Each step writes t + 1 into the
    self-attention cache slot t of every hypothesis (BEAM entries a slot) and adds the
    sentence's cache sum and its cross-attention sum into a per-sentence value (a wrong
    row put back changes it); `work` counts how often each sentence was stepped."""
    settle_at = tf.constant(settle_at, tf.int32)
    batch = int(settle_at.shape[0])

    def step(t, sentences, cache):
        value, work, settle_at = sentences
        (layer,) = cache
        slot = tf.range(tf.shape(layer["key"])[2])[None, None, :, None] // BEAM
        key = tf.where(tf.equal(slot, t), tf.cast(t + 1, tf.float32), layer["key"])
        per_sentence = tf.reduce_sum(key, axis=[1, 2, 3])                     # [n]
        cross = tf.reduce_sum(layer["cross_key"], axis=[1, 2, 3])             # [n]
        live = t < settle_at
        value = value + tf.where(live, per_sentence + cross, 0.0)
        layer = {**layer, "key": key}
        return t + 1, (value, work + 1, settle_at), [layer]

    def settled(t, sentences):
        return t >= sentences[2]

    def decode(settle_at):
        sentences = (tf.zeros([batch]), tf.zeros([batch], tf.int32), settle_at)
        capacity = decoding_loop.capacities(max_length)[0]
        # Each sentence's cross-attention keys hold its index: mixing two up shows.
        cross = tf.reshape(tf.range(batch, dtype=tf.float32), [batch, 1, 1, 1])
        cache = [{"key": tf.zeros([batch, HEADS, capacity * BEAM, DEPTH]),
                  "value": tf.zeros([batch, HEADS, capacity * BEAM, DEPTH]),
                  "cross_key": tf.tile(cross, [1, HEADS, SOURCE, DEPTH])}]
        value, work, _ = decoding_loop.run(step, settled, tf.constant(0), sentences, cache,
                                           max_length, beam_size=BEAM, compact=compact)
        return value, work

    return [x.numpy() for x in tf.function(decode, jit_compile=jit_compile)(settle_at)]


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("settle_at", [
    [3, 9, 2, 20, 5, 5, 40, 1, 7, 2, 2, 3, 30, 4, 6, 8],  # a few run past the first segment
    [12] * 16,                                            # all settle together
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 45],
])
def test_compaction_gives_the_same_result_with_less_work(settle_at, jit_compile):
    max_length = 48
    static_value, static_work = _run(settle_at, max_length, False, jit_compile)
    value, work = _run(settle_at, max_length, True, jit_compile)
    np.testing.assert_allclose(value, static_value)
    assert np.all(work >= np.array(settle_at))  # every sentence stepped until it settled
    assert np.all(static_work == max(settle_at))
    if len(set(settle_at)) > 1:
        assert work.sum() < static_work.sum()


def test_narrow_batches_are_not_compacted():
    settle_at = [1, 2, 3, 9]
    value, work = _run(settle_at, 16, True, True)
    assert np.all(work == 9)

