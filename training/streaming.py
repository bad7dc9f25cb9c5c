"""Parallel corpora as `tf.data.Dataset`s of `(source_text, target_text)` string pairs.

This module reads corpora; `training/data.py` turns the pairs it yields into token-budget
batches, and `training/corpus.py` picks the files or TFDS dataset a run configuration names.
It never imports either of them.

Sources: any two plain-text files or globs of sharded files (one sentence a line, `.gz`
accepted), TFDS translation datasets by name, and the shipped Multi30k corpus.

- `stream_pairs` (training, any size): the files are read by `tf.data.TextLineDataset`
  shard by shard, interleaved, optionally shuffled by shard and sharded per worker; no
  sentence ever becomes a Python object and the dataset's graph holds only file names.
  `shard_pairs` pairs the shards of two globs; `aligned_blocks` checks line alignment and
  UTF-8 as the lines stream, and `data_errors` turns a failed check into a one-line
  `DataError` naming the file and line.
- `tfds_pairs`: a TFDS translation dataset, streamed as TFDS reads its records.
- `worker_shard` / `input_pipeline`: which part of the corpus a worker of a
  MultiWorkerMirroredStrategy cluster reads.
- `read_lines` / `read_parallel` / `text_pairs` (evaluation splits, a few thousand
  sentences for BLEU, and small experiments): Python lists.
- `count_lines`, `iterate_strings`: counting and sampling a stream without holding it.
"""

import contextlib
import gzip
import os
import re

import tensorflow as tf

from keras_transformer.errors import UsageError

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


# Streaming text files ---------------------------------------------------------------------

_GLOB_CHARS = "*?["
# Errors found while a stream is read surface as tf.errors.InvalidArgumentError; this
# prefix marks ours so that `data_errors` can turn them back into one-line DataErrors.
_STREAM_ERROR = "corpus error: "
_CHECK_BATCH = 512  # lines checked together (alignment, UTF-8) before unbatching


def compression_type(path):
    """The `TextLineDataset` compression of a file, from its name."""
    if path.endswith(".gz"):
        return "GZIP"
    if path.endswith((".zz", ".zlib")):
        return "ZLIB"
    return ""


def expand_paths(pattern):
    """The sorted files a path or glob (`train.*.en.gz`) names; a missing file or a glob
    that matches nothing is a DataError."""
    if any(c in pattern for c in _GLOB_CHARS):
        paths = sorted(tf.io.gfile.glob(pattern))
        if not paths:
            raise DataError(f"{pattern}: no file matches")
        return paths
    if not tf.io.gfile.exists(pattern) or tf.io.gfile.isdir(pattern):
        raise DataError(f"{pattern}: no such file")
    return [pattern]


def check_not_empty(path):
    """Raise DataError if `path` holds no visible character.

    Reads only up to the first non-blank byte (a few bytes for a real corpus), so it is
    cheap for files of any size; compressed files are decompressed as they are read.
    """
    with tf.io.gfile.GFile(path, "rb") as raw:
        f = gzip.GzipFile(fileobj=raw) if compression_type(path) == "GZIP" else raw
        try:
            while True:
                chunk = f.read(1 << 16)
                if not chunk:
                    break
                if chunk.strip():
                    return
        except (OSError, EOFError) as e:  # a truncated or non-gzip .gz file
            raise DataError(f"{path}: cannot be read ({e})") from None
    raise DataError(f"{path}: the file is empty")


def shard_pairs(source_pattern, target_pattern):
    """[(source_file, target_file), ...]: shard i of the sorted source glob with shard i of
    the sorted target glob. Both must name the same number of files, none of them empty
    (checked here, eagerly; line alignment and UTF-8 are checked as the files stream)."""
    sources, targets = expand_paths(source_pattern), expand_paths(target_pattern)
    if len(sources) != len(targets):
        raise DataError(
            f"{source_pattern} names {len(sources)} files but {target_pattern} names "
            f"{len(targets)}: shard i of the source pairs with shard i of the target")
    for path in sources + targets:
        check_not_empty(path)
    return list(zip(sources, targets))


def _error_message(*parts):
    return tf.strings.join([_STREAM_ERROR, *parts])


def _first_bad_line(lines, first_line):
    """(any invalid, line number of the first line that is not valid UTF-8)."""
    valid = tf.equal(tf.strings.length(lines),
                     tf.strings.length(tf.strings.unicode_transcode(
                         lines, "UTF-8", "UTF-8", errors="ignore")))
    bad = tf.reduce_any(~valid)
    # A trailing 1 keeps argmax defined for an empty block (the end sentinel).
    index = tf.argmax(tf.concat([tf.cast(~valid, tf.int64), [1]], 0), output_type=tf.int64)
    return bad, first_line + index


def aligned_blocks(source, target, source_compression="", target_compression=""):
    """Blocks of up to 512 `(source line, target line)` pairs of two parallel files,
    streamed (`.unbatch()` gives pairs).

    Checked as they stream, a block at a time (an InvalidArgumentError whose message
    names the file; wrap the reading loop in `data_errors()` for a one-line DataError):
    both files end on the same line, and every line is valid UTF-8. The mismatch is found
    when the shorter file ends: a sentinel element closes each side, so the zip cannot
    silently drop the rest of the longer file.
    """
    def side(path, compression):
        blocks = tf.data.TextLineDataset(path, compression_type=compression).batch(_CHECK_BATCH)
        end = tf.data.Dataset.from_tensors((tf.zeros([0], tf.string), True))
        return blocks.map(lambda block: (block, False)).concatenate(end)

    def check(index, sides):
        (source_lines, source_end), (target_lines, target_end) = sides
        first_line = index * _CHECK_BATCH + 1
        source_count, target_count = tf.shape(source_lines)[0], tf.shape(target_lines)[0]
        aligned = tf.equal(source_end, target_end) & tf.equal(source_count, target_count)
        source_shorter = source_end | (source_count < target_count)
        shorter = tf.where(source_shorter, source, target)
        longer = tf.where(source_shorter, target, source)
        last = first_line - 1 + tf.cast(tf.minimum(source_count, target_count), tf.int64)
        checks = [tf.debugging.Assert(aligned, [_error_message(
            shorter, " ends after line ", tf.strings.as_string(last), " but ", longer,
            " has more lines: parallel files must be aligned line by line")])]
        for path, lines in ((source, source_lines), (target, target_lines)):
            bad, line = _first_bad_line(lines, first_line)
            checks.append(tf.debugging.Assert(~bad, [_error_message(
                path, ":", tf.strings.as_string(line), ": not valid UTF-8")]))
        with tf.control_dependencies(checks):
            return tf.identity(source_lines), tf.identity(target_lines)

    pairs = tf.data.Dataset.zip(side(source, source_compression),
                                side(target, target_compression))
    return pairs.enumerate().map(check)


def stream_pairs(shards, seed=None, num_workers=1, worker_index=0, limit=None,
                 cycle_length=4):
    """A dataset of `(source, target)` strings read from parallel shard files.

    `shards` is `[(source_file, target_file), ...]` (see `shard_pairs`). Shards are read
    `cycle_length` at a time, a block of 512 lines from each in turn (`interleave`,
    deterministic).

    - `seed`: None reads the shards in sorted order; an int shuffles the shard order,
      afresh on every pass over the dataset (`repeat`), the same sequence for a seed.
      Shuffling sentences is `make_batches`' `shuffle_buffer`.
    - `limit`: only the first `limit` pairs of the unshuffled stream (smoke runs); the
      shard order is then never shuffled, so every pass sees the same pairs.
    - `num_workers`, `worker_index`: this worker's part for multi-worker training. The
      policy is FILE when there are at least as many shards as workers and no `limit`:
      the shard list is split (`Dataset.shard` on the file list), so each worker reads
      only its own files, a `1/num_workers` share of the I/O and decompression. Otherwise
      DATA: every worker reads all shards and keeps every `num_workers`-th pair — correct
      for any file count (the workers share the seed, hence the order), but each worker
      decompresses everything. The parts are disjoint
      and together cover the corpus. The dataset's auto-shard policy is then set to OFF,
      so that `tf.distribute` does not shard it a second time.

    Line alignment and UTF-8 are checked as the shards stream (see `aligned_blocks`).
    """
    if not shards:
        raise DataError("no shard files to read")
    if not 0 <= worker_index < num_workers:
        raise ValueError(f"worker_index {worker_index} is not in [0, {num_workers})")
    sources, targets = zip(*shards)
    files = tf.data.Dataset.from_tensor_slices((
        list(sources), list(targets),
        [compression_type(p) for p in sources], [compression_type(p) for p in targets]))
    by_file = num_workers > 1 and len(shards) >= num_workers and not limit
    count = len(shards)
    if by_file:
        files = files.shard(num_workers, worker_index)
        count = len(range(worker_index, len(shards), num_workers))
    if seed is not None and not limit and count > 1:
        files = files.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    # Interleaving whole blocks (not lines) keeps the per-pair cost low; the shuffle
    # buffer of `make_batches` mixes the lines of the blocks it holds.
    pairs = files.interleave(aligned_blocks, cycle_length=max(1, min(cycle_length, count)),
                             block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
                             deterministic=True).unbatch()
    if limit:
        pairs = pairs.take(limit)
    if num_workers > 1:
        if not by_file:
            pairs = pairs.shard(num_workers, worker_index)
        pairs = auto_shard_off(pairs)
    return pairs


def worker_shard(strategy=None):
    """(number of input pipelines, this one's index) for `stream_pairs`.

    MultiWorkerMirroredStrategy: one pipeline per worker (chief first, as in its
    cluster spec), read from TF_CONFIG through the strategy's cluster resolver. Any
    other strategy (one machine, its replicas fed by `tf.distribute` from one
    pipeline): (1, 0).
    """
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return 1, 0
    return input_pipeline(resolver.cluster_spec().as_dict(), resolver.task_type,
                          resolver.task_id)


def input_pipeline(cluster, task_type, task_id):
    """(pipelines, index) of a task in a cluster spec `{"chief": [...], "worker": [...]}`:
    the chief and the workers each read a part, the chief first."""
    chiefs, workers = len(cluster.get("chief", [])), len(cluster.get("worker", []))
    if chiefs + workers <= 1:
        return 1, 0
    if task_type not in ("chief", "worker"):
        raise ValueError(f"a {task_type!r} task reads no training data")
    index = 0 if task_type == "chief" else chiefs + int(task_id)
    return chiefs + workers, index


@contextlib.contextmanager
def data_errors():
    """Turn the errors `aligned_blocks` raises while a stream is read into DataErrors."""
    try:
        yield
    except tf.errors.InvalidArgumentError as e:
        # tf.debugging.Assert prints its message as "[<message>]" and then the op's name.
        found = re.search(re.escape(_STREAM_ERROR) + r"(.*?)\](?=\s|$)", e.message)
        if not found:
            raise
        raise DataError(found.group(1)) from None


def count_lines(paths):
    """Lines in text files (plain or compressed), counted by tf.data without Python strings."""
    total = tf.constant(0, tf.int64)
    for path in paths:
        lines = tf.data.TextLineDataset(path, compression_type=compression_type(path))
        total += lines.batch(4096).reduce(tf.constant(0, tf.int64),
                                          lambda n, block: n + tf.cast(tf.size(block), tf.int64))
    return int(total)


def iterate_strings(dataset, block=1024):
    """Python strings of a dataset of scalar strings, decoded a block at a time (one
    at a time in memory for the consumer)."""
    with data_errors():
        for strings in dataset.batch(block).as_numpy_iterator():
            for s in strings:
                yield s.decode("utf-8", errors="replace")


def text_pairs(source_lines, target_lines):
    """A dataset of `(source, target)` strings from two aligned lists.

    The lists become one constant in the dataset's graph: for small corpora (evaluation
    splits, notebooks, tests) only; training reads files with `stream_pairs`.
    """
    return tf.data.Dataset.from_tensor_slices(
        (tf.constant(source_lines, tf.string), tf.constant(target_lines, tf.string))
    )


def tfds_pairs(name, split, source_lang, target_lang, data_dir=None, download=True,
               shuffle_seed=None, num_workers=1, worker_index=0):
    """`(source, target)` strings of a TFDS translation dataset, e.g.
    `tfds_pairs("wmt14_translate/de-en", "train", "en", "de")`.

    The languages are the dataset's feature keys, so either direction works. TFDS reads
    its TFRecord shards as a stream. `shuffle_seed` shuffles the order of those files
    (seeded; `make_batches` shuffles sentences). With `num_workers > 1` this worker reads
    only its part, `tfds.even_splits(split, num_workers)[worker_index]`: TFDS turns the
    sub-split into ranges of records, so every worker reads disjoint records (whatever
    the file count) and together they cover the split; tf.distribute's auto-sharding is
    then switched off.
    """
    import tensorflow_datasets as tfds

    if num_workers > 1:
        split = tfds.even_splits(split, n=num_workers)[worker_index]
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed)
    dataset = tfds.load(name, split=split, data_dir=data_dir, download=download,
                        shuffle_files=shuffle_seed is not None, read_config=read_config)
    features = dataset.element_spec
    for lang in (source_lang, target_lang):
        if lang not in features:
            raise DataError(f"TFDS dataset {name} has languages {sorted(features)}, not {lang!r}")
    pairs = dataset.map(lambda ex: (ex[source_lang], ex[target_lang]),
                        num_parallel_calls=tf.data.AUTOTUNE)
    return auto_shard_off(pairs) if num_workers > 1 else pairs


def auto_shard_off(dataset):
    """`dataset` with tf.distribute's auto-sharding off: it is this worker's part already."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options)
