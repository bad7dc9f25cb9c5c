"""The decoding loop shared by greedy and beam search: cache segments and batch compaction.

Both decoders hand `run` a step function over named state: the step counter `t`, a
tuple of per-sentence tensors (first axis = sentence) and the decoder cache (a row per
sentence too; its self-attention keys/values hold `beam_size` entries a slot on axis 2).
Every loop has static shapes, so XLA compiles it whole and TFLite converts it to builtins.
Two things keep it from paying for work that changes nothing:

- Cache segments (`capacities`): the first loop holds `FIRST_SEGMENT` self-attention
  slots, the next one the full `max_length`; each step attends over the whole cache,
  so a cache longer than its filled part wastes that work.
- Batch compaction (`compact=True`): a sentence is settled once its result can no
  longer change, yet a static batch steps every sentence until the last one settles.
  So the batch goes at full width only until at most a quarter of its sentences are
  unsettled; those then go on alone, as a batch a quarter the size, and are put back.
  Settled sentences are no longer stepped; their results are the same.
"""

import tensorflow as tf

# Cache slots of the first loop segment; Multi30k translations are ~15 subword tokens long
# on average, and few exceed 32.
FIRST_SEGMENT = 32
# The narrow batch is 1/COMPACTION of the batch. On the Multi30k test set (main-job model,
# batches of 32, beam 4; `bench/compaction.py`) sentences settle after 16 steps at the median
# and 44 at most (stopping "full"): static batches take 27,040 sentence-steps where 16,765 are
# needed. Compacted, the test set decodes in 6.6 instead of 7.8 s (exact stopping: 8.4
# instead of 11.3 s), the same translations. An ad-hoc replay of the steps with measured step
# times put halving down to width 1 only ~10 % further, for one more loop body to compile
# per width; in a trial, nested compaction (32 -> 8 -> 2) decoded no faster than one level.
COMPACTION = 4
# Batches narrower than this (batch 1 above all) keep the plain loop: their groups would
# be one or two sentences, and the gain is measured at 32.
MIN_COMPACT_WIDTH = 8


def capacities(max_length):
    """Self-attention cache sizes of the loop's segments: `FIRST_SEGMENT` slots, then
    `max_length`.

    Each step attends over every slot of the cache (× beam_size entries in beam search):
    a 128-row beam step's decoder layers take 2.4 ms at 16 slots and 3.2 at 32 (AMX Xeon,
    2 cores, `bench/step_profile.py`). Each segment is one more copy of the loop body to
    trace and compile, so there are two. Three (16, 32, full; AMX Xeon, main-job model,
    test set, beam 4) decoded 7 % faster once compiled (3.29 vs 3.54 s) but made
    `keras-transformer translate --file` 14 % slower from a cold start (27.0 vs 23.6 s:
    more to compile per batch shape) and the TFLite export 29.5 → 35.3 s, 1.96 → 2.21 GB.
    (Three loops in one XLA function also met a tf2xla error, "Cannot find body function
    …_const_0", when the cross-attention cache was a constant.)
    """
    static = tf.get_static_value(max_length)
    if static is not None:
        return sorted({min(FIRST_SEGMENT, int(static)), int(static)})
    return [tf.minimum(FIRST_SEGMENT, max_length), max_length]


def run(step, settled, t, sentences, cache, max_length, beam_size=1, compact=True):
    """Run `step` until every sentence is `settled` or `t` reaches `max_length`.

    Args:
        step: `(t, sentences, cache) -> (t + 1, sentences, cache)`.
        settled: `(t, sentences) -> bool [batch]`; a settled sentence's result no longer
            changes, whether or not it is stepped.
        t, sentences, cache: the start state; the cache made with capacity
            `capacities(max_length)[0]` (`capacity · beam_size` entries on axis 2).
        max_length: the static output length.
        beam_size: hypotheses per sentence (self-attention cache entries per slot).
        compact: compact the batch (see the module docstring).

    Returns the final `sentences`.

    Example (eager): eight sentences that settle at known steps, a step that counts how
    often each one is stepped; the two that run long go on alone after step 3.
    >>> settle_at = tf.constant([1, 5, 2, 9, 1, 1, 3, 2])
    >>> def step(t, sentences, cache):
    ...     work, settle_at = sentences
    ...     return t + 1, (work + 1, settle_at), cache
    >>> cache = [{"key": tf.zeros([8, 1, 16, 1]), "value": tf.zeros([8, 1, 16, 1]),
    ...           "cross_key": tf.zeros([8, 1, 1, 1])}]
    >>> work, _ = run(step, lambda t, sentences: t >= sentences[1], tf.constant(0),
    ...               (tf.zeros([8], tf.int32), settle_at), cache, max_length=16)
    >>> work.numpy()  # a static batch would step all eight 9 times
    array([3, 9, 3, 9, 3, 3, 3, 3], dtype=int32)
    """
    sizes = capacities(max_length)
    batch = sentences[0].shape[0]
    if not compact or (batch is not None and batch < MIN_COMPACT_WIDTH):
        return _segments(step, settled, (t, sentences, cache), sizes, beam_size)[1]
    batch = tf.shape(sentences[0])[0]
    width = tf.maximum(batch // COMPACTION, 1)

    def count(live):
        return tf.reduce_sum(tf.cast(live, tf.int32))

    # Full width (through both cache segments) until at most `width` sentences are
    # unsettled; then those alone, as one narrow batch with the full-size cache.
    t, sentences, cache = _segments(step, settled, (t, sentences, cache), sizes, beam_size,
                                    more=lambda live: count(live) > width)
    live = tf.logical_not(settled(t, sentences))
    picked = tf.math.top_k(tf.cast(live, tf.int32), width).indices  # unsettled first
    narrow = (t, _take(sentences, picked), _take_cache(cache, picked))
    _, narrow_sentences, narrow_cache = _segments(step, settled, narrow, sizes[-1:], beam_size)
    back = _put_back(picked, batch)
    return tuple(back(full, part) for full, part in zip(sentences, narrow_sentences))


def _segments(step, settled, state, sizes, beam_size, more=None):
    """One `tf.while_loop` per cache size in `sizes` (the cache grown before each, if
    smaller), each while `t` < that size, some sentence is unsettled and `more(live)`."""
    for capacity in sizes:
        t, sentences, cache = state
        entries = cache[0]["key"].shape[2]
        static = tf.get_static_value(capacity)
        if entries is None or static is None or entries != static * beam_size:
            cache = grow_cache(cache, capacity, beam_size)  # a no-op pad if the same size

        def not_done(t, sentences, cache, capacity=capacity):
            live = tf.logical_not(settled(t, sentences))
            go = tf.logical_and(t < capacity, tf.reduce_any(live))
            return go if more is None else tf.logical_and(go, more(live))

        state = tf.while_loop(not_done, step, (t, sentences, cache))
    return state


def _put_back(picked, batch):
    """`back(full, part, rows_per_sentence=1)`: `full` with the rows of the `picked`
    sentences replaced by `part`'s (a gather and a select; `picked` holds distinct
    sentences)."""
    is_picked = tf.equal(tf.range(batch)[:, None], picked[None, :])            # [batch, width]
    found = tf.reduce_any(is_picked, axis=1)                                    # [batch]
    where = tf.argmax(tf.cast(is_picked, tf.int32), axis=1, output_type=tf.int32)

    def back(full, part, rows_per_sentence=1):
        row = tf.range(tf.shape(full)[0])
        sentence = row // rows_per_sentence
        source = tf.gather(where, sentence) * rows_per_sentence + row % rows_per_sentence
        keep = tf.reshape(tf.gather(found, sentence), [-1] + [1] * (len(full.shape) - 1))
        return tf.where(keep, tf.gather(part, source), full)

    return back


def _take(sentences, picked):
    return tuple(tf.gather(x, picked) for x in sentences)


def _take_cache(cache, picked):
    """The cache of the `picked` sentences."""
    return [{name: tf.gather(x, picked) for name, x in layer.items()} for layer in cache]


def grow_cache(cache, capacity, beam_size=1):
    """Pad each layer's self-attention keys/values (axis 2) to `capacity` slots of
    `beam_size` entries (slot-major, so the filled entries keep their places)."""
    def grow(x):
        return tf.pad(x, [[0, 0], [0, 0], [0, capacity * beam_size - tf.shape(x)[2]], [0, 0]])

    return [{**layer, "key": grow(layer["key"]), "value": grow(layer["value"])}
            for layer in cache]
