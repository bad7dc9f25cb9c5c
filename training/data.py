"""String pairs → token-budget batches for teacher-forced training (§5.1).

`make_batches` turns a `tf.data.Dataset` of `(source_text, target_text)` pairs (from
`training/streaming.py`, usually through `training/corpus.py`) into
`((source_ids, target_in_ids), target_out_ids)` batches bucketed by length, so that a
batch holds about `batch_tokens` tokens (padding included) on each side. `epoch_size`
and `with_known_length` count a finite batch stream in one pass.

Reading corpora (files, shards, TFDS, per-worker parts) is `training/streaming.py`'s
concern; `worker_shard` is imported here from it so that `training/train.py` finds all
it needs for its input in this module.
"""

import tensorflow as tf

from keras_transformer.tokenizer import BOS_ID, EOS_ID
from keras_transformer.training.streaming import data_errors, worker_shard

__all__ = ["bucket_boundaries", "epoch_size", "make_batches", "tokenize_pairs",
           "with_known_length", "worker_shard"]


def tokenize_pairs(pairs, tokenize, max_length):
    """Tokenize string pairs in chunks with `tokenize` (strings `[n]` → ragged ids);
    drop pairs longer than `max_length` or empty."""

    def encode(source, target):
        return tokenize(source), tokenize(target)

    def fits(source, target):
        source_len, target_len = tf.shape(source)[0], tf.shape(target)[0]
        return (source_len > 0) & (target_len > 0) & \
            (source_len <= max_length) & (target_len + 1 <= max_length)

    return (pairs.batch(1024)
            .map(encode, num_parallel_calls=tf.data.AUTOTUNE)
            .unbatch()
            .filter(fits))


def bucket_boundaries(max_length, smallest=8, growth=1.3):
    """Length buckets growing geometrically up to `max_length + 1`."""
    bounds, edge = [], smallest
    while edge <= max_length:
        bounds.append(int(edge))
        edge = max(edge + 1, edge * growth)
    return bounds + [max_length + 1]


def make_batches(pairs, tokenizer, batch_tokens=4096, max_length=128, shuffle_buffer=None,
                 cache=True, seed=None, repeat=False, sampling_alpha=None):
    """Token-budget batches `((source_ids, target_in), target_out)` for `model.fit`.

    `target_in` is `[bos] + target` and `target_out` is `target + [eos]`. Sentences are
    bucketed by their longer side; each bucket pads to its boundary (few distinct shapes,
    few retraces) and holds `batch_tokens // boundary` sentences. `shuffle_buffer`
    shuffles sentences before bucketing (training); None keeps the order. `repeat`
    makes the stream endless (a fresh shuffle each pass): `fit` then takes
    `steps_per_epoch` steps an epoch and never runs out of data mid-epoch.
    `sampling_alpha` tokenizes every pass afresh with a sampled segmentation a sentence
    (`SubwordTokenizer.sampler`); `cache` then keeps the strings instead of the ids.
    """
    if sampling_alpha is None:  # tokenize once, then cache, shuffle and repeat the ids
        tokens = tokenize_pairs(pairs, tokenizer.tokenize, max_length)
        tokens = _order(tokens, cache, shuffle_buffer, seed, repeat)
    else:
        tokens = tokenize_pairs(_order(pairs, cache, shuffle_buffer, seed, repeat),
                                tokenizer.sampler(sampling_alpha), max_length)

    def teacher_forcing(source, target):
        bos, eos = tf.constant([BOS_ID], tf.int32), tf.constant([EOS_ID], tf.int32)
        return source, tf.concat([bos, target], 0), tf.concat([target, eos], 0)

    bounds = bucket_boundaries(max_length)
    batch_sizes = [max(1, batch_tokens // b) for b in bounds] + [1]
    batches = tokens.map(teacher_forcing, num_parallel_calls=tf.data.AUTOTUNE).bucket_by_sequence_length(
        lambda source, target_in, target_out: tf.maximum(tf.shape(source)[0],
                                                         tf.shape(target_in)[0]),
        bucket_boundaries=bounds,
        bucket_batch_sizes=batch_sizes,
        pad_to_bucket_boundary=True,
    )
    return batches.map(
        lambda source, target_in, target_out: ((source, target_in), target_out)
    ).prefetch(tf.data.AUTOTUNE)


def _order(dataset, cache, shuffle_buffer, seed, repeat):
    if cache:
        dataset = dataset.cache()
    if shuffle_buffer:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return dataset.repeat() if repeat else dataset


def with_known_length(batches):
    """`batches` with its cardinality set (one counting pass).

    Keras warns "Your input ran out of data" at the end of every pass over a dataset of
    unknown length; with the length known it stops at the last batch instead.
    """
    count, _ = epoch_size(batches)
    return batches.apply(tf.data.experimental.assert_cardinality(count))


def epoch_size(batches):
    """(batches, non-pad target tokens) in one pass of a finite `make_batches` dataset.

    Being a full pass, it also runs the checks of a streamed corpus (line alignment,
    UTF-8): their failures become one-line DataErrors here.
    """

    def add(totals, batch):
        _, target_out = batch
        tokens = tf.math.count_nonzero(target_out, dtype=tf.int64)
        return totals[0] + 1, totals[1] + tokens

    zero = tf.constant(0, tf.int64)
    with data_errors():
        count, tokens = batches.reduce((zero, zero), add)
    return int(count), int(tokens)
