"""Parallel corpora → token-budget batches for teacher-forced training.

Sources: any two plain-text files (one sentence a line, `.gz` accepted), TFDS translation
datasets by name, and the shipped Multi30k corpus. Every source becomes a
`tf.data.Dataset` of `(source_text, target_text)` string pairs; `make_batches` turns it
into `((source_ids, target_in_ids), target_out_ids)` batches bucketed by length so a batch
holds about `batch_tokens` tokens (padding included) on each side, as in §5.1.
"""

import gzip
import os

import tensorflow as tf

from keras_transformer.errors import UsageError
from keras_transformer.tokenizer import BOS_ID, EOS_ID

MULTI30K_DIR = os.path.join(os.path.dirname(__file__), "data", "multi30k")
MULTI30K_SPLITS = ("train", "val", "test_2016_flickr")
MULTI30K_LANGS = ("en", "de", "fr")


class DataError(UsageError):
    """A corpus file that cannot be used; the message names the file."""


def read_lines(path):
    """All lines of a UTF-8 text file (gzip if it ends in .gz), without newlines."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    opener = gzip.open if path.endswith(".gz") else open
    lines = []
    with opener(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                lines.append(raw.decode("utf-8").rstrip("\r\n"))
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{number}: not valid UTF-8 ({e.reason})") from None
    if not any(line.strip() for line in lines):
        raise DataError(f"{path}: the file is empty")
    return lines


def read_parallel(source_path, target_path):
    """Two aligned files → (source lines, target lines); they must have equal line counts."""
    source, target = read_lines(source_path), read_lines(target_path)
    if len(source) != len(target):
        raise DataError(
            f"{source_path} has {len(source)} lines but {target_path} has {len(target)}: "
            "parallel files must be aligned line by line"
        )
    return source, target


def multi30k_paths(split, source_lang, target_lang):
    """Paths of the shipped Multi30k files for one split and language pair."""
    if split not in MULTI30K_SPLITS:
        raise DataError(f"Multi30k has no split {split!r}; choose from {MULTI30K_SPLITS}")
    for lang in (source_lang, target_lang):
        if lang not in MULTI30K_LANGS:
            raise DataError(f"Multi30k ships {MULTI30K_LANGS}, not {lang!r}")
    return tuple(os.path.join(MULTI30K_DIR, f"{split}.{lang}.gz")
                 for lang in (source_lang, target_lang))


def text_pairs(source_lines, target_lines):
    """A dataset of `(source, target)` strings from two aligned lists."""
    return tf.data.Dataset.from_tensor_slices(
        (tf.constant(source_lines, tf.string), tf.constant(target_lines, tf.string))
    )


def tfds_pairs(name, split, source_lang, target_lang, data_dir=None, download=True):
    """`(source, target)` strings of a TFDS translation dataset, e.g.
    `tfds_pairs("wmt14_translate/de-en", "train", "en", "de")`.

    The languages are the dataset's feature keys, so either direction works.
    """
    import tensorflow_datasets as tfds

    dataset = tfds.load(name, split=split, data_dir=data_dir, download=download)
    features = dataset.element_spec
    for lang in (source_lang, target_lang):
        if lang not in features:
            raise DataError(f"TFDS dataset {name} has languages {sorted(features)}, not {lang!r}")
    return dataset.map(lambda ex: (ex[source_lang], ex[target_lang]),
                       num_parallel_calls=tf.data.AUTOTUNE)


def tokenize_pairs(pairs, tokenizer, max_length):
    """Tokenize string pairs in chunks; drop pairs longer than `max_length` or empty."""

    def encode(source, target):
        return tokenizer.tokenize(source), tokenizer.tokenize(target)

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
                 cache=True, seed=None, repeat=False):
    """Token-budget batches `((source_ids, target_in), target_out)` for `model.fit`.

    `target_in` is `[bos] + target` and `target_out` is `target + [eos]`. Sentences are
    bucketed by their longer side; each bucket pads to its boundary (few distinct shapes,
    few retraces) and holds `batch_tokens // boundary` sentences. `shuffle_buffer`
    shuffles sentences before bucketing (training); None keeps the order. `repeat`
    makes the stream endless (a fresh shuffle each pass): `fit` then takes
    `steps_per_epoch` steps an epoch and never runs out of data mid-epoch.
    """
    tokens = tokenize_pairs(pairs, tokenizer, max_length)
    if cache:
        tokens = tokens.cache()
    if shuffle_buffer:
        tokens = tokens.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        tokens = tokens.repeat()

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


def with_known_length(batches):
    """`batches` with its cardinality set (one counting pass).

    Keras warns "Your input ran out of data" at the end of every pass over a dataset of
    unknown length; with the length known it stops at the last batch instead.
    """
    count, _ = epoch_size(batches)
    return batches.apply(tf.data.experimental.assert_cardinality(count))


def epoch_size(batches):
    """(batches, non-pad target tokens) in one pass of a finite `make_batches` dataset."""

    def add(totals, batch):
        _, target_out = batch
        tokens = tf.math.count_nonzero(target_out, dtype=tf.int64)
        return totals[0] + 1, totals[1] + tokens

    zero = tf.constant(0, tf.int64)
    count, tokens = batches.reduce((zero, zero), add)
    return int(count), int(tokens)
