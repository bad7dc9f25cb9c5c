"""Continuous batching: more sentences than decoding rows, each row refilled as it frees.

`decoding_loop.run` decodes a batch: every sentence starts at step 0 and the loop runs
until the last one settles, so a batch pays for its slowest sentence (batch compaction
narrows the batch near the end, but the narrow batch still steps its settled rows).
`run` here takes any number of sentences and decodes them through a fixed number of
rows (`slots`): the step a sentence settles, its state is stored and the next sentence
in the queue takes its row, at its own step 0. Each row keeps its own position; the
self-attention cache is a ring of `capacity` slots written at the global step
(`step % capacity`, one DynamicUpdateSlice for all rows, as in the batch loop) and each
sentence attends to the slots written since it started (`attention.visible_entries`
with `positions`). The work is then close to the sentence-steps the sentences need,
at full width until the queue runs dry.

Everything has static shapes (one `tf.while_loop`; the refills are an inner loop over
the rows that settled, one DynamicUpdateSlice a tensor a row), so it compiles under XLA.
"""

import tensorflow as tf
from keras import ops

# Rows decoded at once when a call has more sentences than this (`TextTranslator`):
# 32 sentences × beam 4 = 128 rows, the width whose steps the batch loop is tuned for.
SLOTS = 32
# Rows refilled a step at most; a settled row waits for the next step beyond that. With
# 32 rows, sentences of ~20 steps settle ~1.6 a step.
REFILLS = 4


def run(step, settled, sentences, cache, slots, capacity, beam_size=1):
    """Decode all `sentences` through `slots` rows; returns their final state.

    Args:
        step: `(t, sentences, cache, slot) -> (_, sentences, cache)`, with `t` int
            `[slots]` (each row's own position) and `slot` the cache slot to write.
        settled: `(t, sentences) -> bool [slots]`, True once a sentence's result can no
            longer change (at the latest when `t` reaches its output limit).
        sentences: tuple of per-sentence start states, each `[n, ...]`.
        cache: per-layer dicts of per-sentence tensors `[n, ...]` (the cross-attention
            keys and values); "key" and "value", if there, are replaced by a ring of
            `capacity · beam_size` entries a row.
        slots: static number of rows.
        capacity: static ring size, at least every sentence's output limit.
        beam_size: hypotheses a sentence (self-attention entries per ring slot).

    Returns the final `sentences`, each `[n, ...]`, as `decoding_loop.run` would give them.

    Example (eager): five sentences through two rows; a step counts its own steps.
    >>> settle_at = tf.constant([1, 4, 2, 1, 3])
    >>> def step(t, sentences, cache, slot):
    ...     work, settle_at = sentences
    ...     return None, (work + 1, settle_at), cache
    >>> work, _ = run(step, lambda t, sentences: t >= sentences[1],
    ...               (tf.zeros([5], tf.int32), settle_at), [{}], slots=2, capacity=4)
    >>> work.numpy()  # each sentence stepped exactly until it settled
    array([1, 4, 2, 1, 3], dtype=int32)
    """
    n = tf.shape(sentences[0])[0]

    def with_scratch(x):  # row n: where empty rows read from and store to
        return tf.concat([x, x[:1]], axis=0)

    stored = tuple(with_scratch(x) for x in sentences)
    sources = [{name: with_scratch(x) for name, x in layer.items() if name not in ("key", "value")}
               for layer in cache]
    owner = tf.minimum(tf.range(slots), n)                   # [slots]; n = empty row
    live = tuple(tf.gather(x, owner) for x in stored)
    rows = []
    for layer in sources:
        row = {name: tf.gather(x, owner) for name, x in layer.items()}
        if "key" in cache[0]:
            heads, depth = cache[0]["key"].shape[1], cache[0]["key"].shape[3]
            ring = tf.zeros([slots, heads, capacity * beam_size, depth], cache[0]["key"].dtype)
            row.update(key=ring, value=ring)
        rows.append(row)

    def body(clock, owner, start, queued, live, rows, stored):
        t = clock - start
        _, live, rows = step(t, live, rows, clock % capacity)
        ended = settled(t + 1, live) & (owner < n)
        order = tf.math.top_k(tf.cast(ended, tf.int32), slots).indices  # ended rows first
        count = tf.reduce_sum(tf.cast(ended, tf.int32))
        # Up to REFILLS rows a step, unrolled: a loop here made XLA copy the loop state.
        # Rows are read with tf.gather: indexing with a tensor (StridedSlice) made tf2xla
        # trace each index back through the whole step to see if it is a constant.
        for i in range(min(REFILLS, slots)):
            slot, go = order[i], i < count
            old = tf.gather(owner, slot)
            # Store row `slot`'s sentence (or, if not `go`, junk to the scratch row),
            # then load the next one in the queue (n: none left; not `go`: the same).
            stored = tuple(_put(x, tf.where(go, old, n), tf.gather(row, slot))
                           for x, row in zip(stored, live))
            new = tf.where(go, tf.minimum(queued, n), old)
            live = tuple(_put(row, slot, tf.where(go, tf.gather(x, new), tf.gather(row, slot)))
                         for row, x in zip(live, stored))
            rows = [{name: _put(x, slot, tf.where(go, tf.gather(layer[name], new),
                                                  tf.gather(x, slot)))
                     if name in layer else x for name, x in row.items()}
                    for row, layer in zip(rows, sources)]
            owner = _put(owner, slot, new)
            start = _put(start, slot, tf.where(go, clock + 1, tf.gather(start, slot)))
            queued = tf.where(go, tf.minimum(queued + 1, n), queued)
        return clock + 1, owner, start, queued, live, rows, stored

    state = (tf.constant(0), owner, tf.zeros([slots], tf.int32), tf.minimum(slots, n), live,
             rows, stored)
    stored = tf.while_loop(lambda clock, owner, *_: tf.reduce_any(owner < n), body, state)[-1]
    return tuple(x[:-1] for x in stored)


def _put(x, row, value):
    """`x[row] = value` (DynamicUpdateSlice, in place inside a loop)."""
    value = ops.expand_dims(ops.cast(value, x.dtype), 0)
    return ops.slice_update(x, [row] + [0] * (len(x.shape) - 1), value)
