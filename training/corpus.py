"""Which sentences a run configuration names: Multi30k, plain-text files or TFDS."""

import tensorflow as tf

from keras_transformer.training import data

SPLITS = ("train", "valid", "test")
_MULTI30K_SPLIT = {"train": "train", "valid": "val", "test": "test_2016_flickr"}


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _text_paths(config, split):
    source, target = getattr(config, f"{split}_source"), getattr(config, f"{split}_target")
    if not source or not target:
        raise data.DataError(f"data.source is 'text' but data.{split}_source / "
                             f"data.{split}_target are not both set")
    return source, target


def _tfds(config, split):
    if not config.tfds_name:
        raise data.DataError("data.source is 'tfds' but data.tfds_name is not set")
    return data.tfds_pairs(config.tfds_name, getattr(config, f"{split}_split"),
                           config.source_lang, config.target_lang, config.tfds_data_dir)


def split_lines(config, split):
    """(source lines, target lines) of a split as Python lists of str."""
    _check_split(split)
    if config.source == "tfds":
        pairs = _tfds(config, split)
        if split == "train" and config.train_limit:
            pairs = pairs.take(config.train_limit)
        source, target = [], []
        for s, t in pairs.as_numpy_iterator():
            source.append(s.decode("utf-8"))
            target.append(t.decode("utf-8"))
        return source, target
    if config.source == "multi30k":
        paths = data.multi30k_paths(_MULTI30K_SPLIT[split], config.source_lang, config.target_lang)
    elif config.source == "text":
        paths = _text_paths(config, split)
    else:
        raise data.DataError(f"data.source must be multi30k, text or tfds, not {config.source!r}")
    source, target = data.read_parallel(*paths)
    if split == "train" and config.train_limit:
        source, target = source[: config.train_limit], target[: config.train_limit]
    return source, target


def split_pairs(config, split) -> tf.data.Dataset:
    """A split as a dataset of `(source, target)` strings."""
    if config.source == "tfds" and not (split == "train" and config.train_limit):
        return _tfds(config, split)
    return data.text_pairs(*split_lines(config, split))


