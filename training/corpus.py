"""Which sentences a run configuration names: Multi30k, plain-text files or TFDS.

- `split_pairs`: any split as a streamed `tf.data.Dataset` of `(source, target)` strings
  (text files and Multi30k through `streaming.stream_pairs`, TFDS through
  `streaming.tfds_pairs`).
  Training reads the train split only this way, so no training corpus is ever held in
  Python or in a dataset graph, whatever its size; this is also where the train split is
  shuffled by shard and split between workers.
- `split_lines`: a split as two Python lists. Only evaluation uses it (BLEU on the valid
  or test split, a few thousand sentences, which sacreBLEU needs as lists anyway).
- `vocabulary_sentences`: a bounded, seeded sample of the training sentences for
  learning the vocabulary, streamed.
"""

import tensorflow as tf

from keras_transformer.training import streaming

SPLITS = ("train", "valid", "test")
_MULTI30K_SPLIT = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
# `cache_tokens: null` keeps the tokenized train split in memory when its files take
# less than this on disk (Multi30k: 2.7 MB); larger corpora are re-read every epoch.
_AUTO_CACHE_BYTES = 256 << 20


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _text_paths(config, split):
    source, target = getattr(config, f"{split}_source"), getattr(config, f"{split}_target")
    if not source or not target:
        raise streaming.DataError(f"data.source is 'text' but data.{split}_source / "
                                  f"data.{split}_target are not both set")
    return source, target


def _check_source(config):
    if config.source not in ("multi30k", "text", "tfds"):
        raise streaming.DataError(
            f"data.source must be multi30k, text or tfds, not {config.source!r}")
    if config.source == "tfds" and not config.tfds_name:
        raise streaming.DataError("data.source is 'tfds' but data.tfds_name is not set")


def split_shards(config, split):
    """`[(source_file, target_file), ...]` of a text or Multi30k split: the files or the
    shards the globs in `data.{split}_source` / `data.{split}_target` name, checked to
    exist and not be empty (`streaming.shard_pairs`)."""
    _check_split(split)
    _check_source(config)
    if config.source == "multi30k":
        paths = streaming.multi30k_paths(_MULTI30K_SPLIT[split], config.source_lang,
                                         config.target_lang)
    elif config.source == "text":
        paths = _text_paths(config, split)
    else:
        raise streaming.DataError("data.source is 'tfds': its splits are TFDS datasets, not files")
    return streaming.shard_pairs(*paths)


def _tfds(config, split, **kwargs):
    return streaming.tfds_pairs(config.tfds_name, getattr(config, f"{split}_split"),
                                config.source_lang, config.target_lang, config.tfds_data_dir,
                                **kwargs)


def split_lines(config, split):
    """(source lines, target lines) of a split as Python lists of str.

    For evaluation splits (a few thousand sentences); training streams with
    `split_pairs`. A split of several shard files is read shard after shard.
    """
    _check_split(split)
    _check_source(config)
    if config.source == "tfds":
        pairs = _tfds(config, split)
        if split == "train" and config.train_limit:
            pairs = pairs.take(config.train_limit)
        source, target = [], []
        for s, t in pairs.as_numpy_iterator():
            source.append(s.decode("utf-8"))
            target.append(t.decode("utf-8"))
        return source, target
    source, target = [], []
    for source_path, target_path in split_shards(config, split):
        more_source, more_target = streaming.read_parallel(source_path, target_path)
        source += more_source
        target += more_target
    if split == "train" and config.train_limit:
        source, target = source[: config.train_limit], target[: config.train_limit]
    return source, target


def split_pairs(config, split, seed=None, num_workers=1, worker_index=0) -> tf.data.Dataset:
    """A split as a streamed dataset of `(source, target)` strings.

    `seed` shuffles the order of the shard files, afresh every pass (None: sorted
    order); `num_workers` / `worker_index` select this worker's part (see
    `streaming.stream_pairs` for text files — FILE sharding when there are at least as
    many shards as workers, else DATA — and `streaming.tfds_pairs` for TFDS).
    `data.train_limit` keeps the first N pairs of the train split (`take` on the
    unshuffled stream).
    """
    _check_split(split)
    _check_source(config)
    limit = config.train_limit if split == "train" else None
    if config.source == "tfds":
        if limit:  # the first N pairs, then each worker takes every num_workers-th
            pairs = _tfds(config, split).take(limit)
            if num_workers > 1:
                pairs = streaming.auto_shard_off(pairs.shard(num_workers, worker_index))
            return pairs
        return _tfds(config, split, shuffle_seed=seed, num_workers=num_workers,
                     worker_index=worker_index)
    return streaming.stream_pairs(split_shards(config, split), seed=seed,
                                  num_workers=num_workers, worker_index=worker_index,
                                  limit=limit)


def train_pairs_count(config):
    """The number of training pairs (`train_limit` applied), counted without holding them:
    TFDS from its metadata (or one pass), files by counting the source lines in tf.data."""
    _check_source(config)
    if config.source == "tfds":
        pairs = _tfds(config, "train")
        count = int(pairs.cardinality())
        if count < 0:
            count = int(pairs.batch(4096).reduce(
                tf.constant(0, tf.int64), lambda n, b: n + tf.cast(tf.shape(b[0])[0], tf.int64)))
    else:
        count = streaming.count_lines([source for source, _ in split_shards(config, "train")])
    return min(count, config.train_limit) if config.train_limit else count


def vocabulary_sentences(config, sample_sentences, seed=0):
    """At most `sample_sentences` training sentences (both languages), a seeded random
    sample streamed as Python strings, for `SubwordTokenizer.train`.

    One streaming pass over the train split: each pair is kept with probability
    `sample_sentences / (2 * pairs)` (`tf.data.Dataset.random(seed)`, so the same seed
    keeps the same pairs), both of its sentences are yielded, and the stream stops at
    `sample_sentences`. Memory is bounded by the sample (held by SentencePiece), not the
    corpus; only the chief calls this (the vocabulary goes to the run directory).
    """
    total = train_pairs_count(config)
    pairs = split_pairs(config, "train")
    if 2 * total > sample_sentences:
        scale = 1 << 30
        threshold = int(scale * sample_sentences / (2 * total))

        def kept(pair, random):
            return tf.math.floormod(random, scale) < threshold

        def drop_random(pair, random):
            return pair

        pairs = tf.data.Dataset.zip(pairs, tf.data.Dataset.random(seed=seed))
        pairs = pairs.filter(kept).map(drop_random)

    def both_sides(sources, targets):
        return tf.concat([sources, targets], 0)

    sentences = pairs.batch(1024).map(both_sides).unbatch()
    return streaming.iterate_strings(sentences.take(sample_sentences))


def cache_tokens(config):
    """Whether `make_batches` should keep the tokenized train split in memory.

    `data.cache_tokens` true / false decides; null (the default) caches Multi30k, a
    `train_limit` run, and text files that take less than 256 MB on disk: a large
    corpus (TFDS or big files) is tokenized afresh every epoch instead, in bounded memory.
    """
    if config.cache_tokens is not None:
        return config.cache_tokens
    if config.source == "multi30k" or config.train_limit:
        return True
    if config.source == "tfds":
        return False
    size = sum(tf.io.gfile.stat(path).length
               for shard in split_shards(config, "train") for path in shard)
    return size < _AUTO_CACHE_BYTES
