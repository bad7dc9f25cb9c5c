"""Issue 15, streaming input: sharded (.gz) text files read by tf.data, seeded shard
shuffling, per-worker sharding, streamed alignment checks, and the vocabulary learned
from a bounded, seeded sample. Shards are small slices of the shipped Multi30k corpus."""

import collections
import gzip
import os

import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_transformer.tokenizer import SubwordTokenizer
from keras_transformer.training import corpus, data, streaming
from keras_transformer.training.config import ConfigError, parse_config

SHARDS, LINES = 4, 50


def _write(path, lines, compress=True):
    opener = gzip.open if compress else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


@pytest.fixture(scope="module")
def multi30k():
    source, target = streaming.read_parallel(*streaming.multi30k_paths("train", "en", "de"))
    return source[: SHARDS * LINES], target[: SHARDS * LINES]


@pytest.fixture
def shards(tmp_path, multi30k):
    """4 shards x 50 lines, train.{0..3}.{en,de}.gz; returns (source glob, target glob)."""
    source, target = multi30k
    # Written in reverse so that creation order differs from sorted order.
    for j in reversed(range(SHARDS)):
        part = slice(j * LINES, (j + 1) * LINES)
        _write(tmp_path / f"train.{j}.en.gz", source[part])
        _write(tmp_path / f"train.{j}.de.gz", target[part])
    return str(tmp_path / "train.*.en.gz"), str(tmp_path / "train.*.de.gz")


def _pairs(dataset):
    return [(s.decode(), t.decode()) for s, t in dataset.as_numpy_iterator()]


def _text_config(source, target, **extra):
    return parse_config({"data": {"source": "text", "train_source": source,
                                  "train_target": target, **extra}}).data


def test_every_pair_arrives_once_per_epoch_and_aligned(shards, multi30k):
    expected = collections.Counter(zip(*multi30k))
    streamed = corpus.split_pairs(_text_config(*shards), "train", seed=3)
    epochs = _pairs(streamed.repeat(2))
    assert collections.Counter(epochs[: SHARDS * LINES]) == expected
    assert collections.Counter(epochs[SHARDS * LINES:]) == expected
    # Within a shard the lines keep their order (shards are interleaved, lines are not).
    source = multi30k[0]
    first = epochs[: SHARDS * LINES]
    for j in range(SHARDS):
        in_shard = [s for s, _ in first if s in set(source[j * LINES:(j + 1) * LINES])]
        assert in_shard == source[j * LINES:(j + 1) * LINES]


def test_shards_pair_by_sorted_glob(shards, tmp_path):
    pairs = streaming.shard_pairs(*shards)
    assert [(os.path.basename(s), os.path.basename(t)) for s, t in pairs] == [
        (f"train.{j}.en.gz", f"train.{j}.de.gz") for j in range(SHARDS)]
    os.remove(tmp_path / "train.3.de.gz")
    with pytest.raises(streaming.DataError) as error:
        streaming.shard_pairs(*shards)
    message = str(error.value)
    assert shards[0] in message and shards[1] in message and "\n" not in message
    assert "names 4 files" in message and "names 3" in message


def test_missing_empty_and_unmatched_files_are_named_eagerly(tmp_path):
    _write(tmp_path / "a.en.gz", ["a line"])
    _write(tmp_path / "empty.de.gz", ["", "  "])
    cases = [(str(tmp_path / "nope.en"), "no such file"),
             (str(tmp_path / "empty.de.gz"), "the file is empty"),
             (str(tmp_path / "none.*.de.gz"), "no file matches")]
    for target, message in cases:
        with pytest.raises(streaming.DataError, match=message) as error:
            corpus.split_pairs(_text_config(str(tmp_path / "a.en.gz"), target), "train")
        assert target in str(error.value)


def test_seeded_shuffle_is_deterministic(shards):
    config = _text_config(*shards)

    def order(seed, passes=1):
        return _pairs(corpus.split_pairs(config, "train", seed=seed).repeat(passes))

    assert order(1) == order(1)
    assert order(1) != order(4)  # another shard order
    two = order(1, passes=2)
    assert two[: SHARDS * LINES] == order(1)
    assert two[: SHARDS * LINES] != two[SHARDS * LINES:]  # reshuffled every pass
    sorted_order = [pair for source, target in streaming.shard_pairs(*shards)
                    for pair in zip(*streaming.read_parallel(source, target))]
    assert order(None) == sorted_order


def _auto_shard_policy(dataset):
    return dataset.options().experimental_distribute.auto_shard_policy


@pytest.mark.parametrize("files", [SHARDS, 1])
def test_two_workers_read_disjoint_parts_that_cover_the_corpus(shards, tmp_path, multi30k,
                                                               files):
    if files == 1:  # fewer files than workers: DATA sharding
        _write(tmp_path / "all.en.gz", multi30k[0])
        _write(tmp_path / "all.de.gz", multi30k[1])
        shards = str(tmp_path / "all.en.gz"), str(tmp_path / "all.de.gz")
    config = _text_config(*shards)
    parts = [_pairs(corpus.split_pairs(config, "train", seed=5, num_workers=2, worker_index=i))
             for i in range(2)]
    assert not set(parts[0]) & set(parts[1])
    assert collections.Counter(parts[0] + parts[1]) == collections.Counter(zip(*multi30k))
    assert abs(len(parts[0]) - len(parts[1])) <= (LINES if files > 1 else 1)
    if files > 1:  # FILE sharding: each worker reads whole shards, two of the four
        source = multi30k[0]
        for part in parts:
            shards_read = {source.index(s) // LINES for s, _ in part}
            assert len(shards_read) == 2
    dataset = corpus.split_pairs(config, "train", seed=5, num_workers=2, worker_index=0)
    assert _auto_shard_policy(dataset) == tf.data.experimental.AutoShardPolicy.OFF


def test_input_pipeline_of_each_task():
    cluster = {"chief": ["h:1"], "worker": ["h:2", "h:3"]}
    assert streaming.input_pipeline(cluster, "chief", 0) == (3, 0)
    assert streaming.input_pipeline(cluster, "worker", 1) == (3, 2)
    assert streaming.input_pipeline({"worker": ["h:2", "h:3"]}, "worker", 1) == (2, 1)
    assert streaming.input_pipeline({"worker": ["h:2"]}, "worker", 0) == (1, 0)
    assert streaming.worker_shard() == (1, 0)  # no strategy: one pipeline
    assert data.worker_shard is streaming.worker_shard  # train.py imports it from data


def test_a_line_count_mismatch_is_a_clear_error(shards, tmp_path, multi30k):
    _write(tmp_path / "train.2.de.gz", multi30k[1][2 * LINES: 3 * LINES - 1])  # 49 lines
    dataset = corpus.split_pairs(_text_config(*shards), "train")
    with pytest.raises(streaming.DataError) as error:
        with streaming.data_errors():
            for _ in dataset:
                pass
    message = str(error.value)
    assert message == (f"{tmp_path / 'train.2.de.gz'} ends after line 49 but "
                       f"{tmp_path / 'train.2.en.gz'} has more lines: parallel files must be "
                       "aligned line by line")
    # The counting pass before training runs the same checks.
    tokenizer = SubwordTokenizer.train(multi30k[0] + multi30k[1], vocab_size=300)
    with pytest.raises(streaming.DataError, match="ends after line 49"):
        data.epoch_size(data.make_batches(dataset, tokenizer, batch_tokens=512))


def test_bad_utf8_in_a_stream_names_file_and_line(tmp_path):
    lines = [f"line {i}".encode() for i in range(700)]
    lines[599] = b"bad \xff line"
    with gzip.open(tmp_path / "a.en.gz", "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    _write(tmp_path / "a.de.gz", [f"Zeile {i}" for i in range(700)])
    dataset = corpus.split_pairs(_text_config(str(tmp_path / "a.en.gz"),
                                              str(tmp_path / "a.de.gz")), "train")
    with pytest.raises(streaming.DataError, match=r"a\.en\.gz:600: not valid UTF-8$"):
        list(streaming.iterate_strings(dataset.map(lambda s, t: s)))


def test_make_batches_on_the_stream(shards, multi30k):
    config = _text_config(*shards)
    tokenizer = SubwordTokenizer.train(
        corpus.vocabulary_sentences(config, sample_sentences=1000, seed=0), vocab_size=300)
    batches = data.make_batches(corpus.split_pairs(config, "train", seed=0), tokenizer,
                                batch_tokens=1024, max_length=200, shuffle_buffer=100, seed=0,
                                cache=False)
    count, tokens = data.epoch_size(batches)
    assert count > 0 and tokens > 0
    sentences = sum(int(source.shape[0]) for (source, _), _ in batches)
    assert sentences == SHARDS * LINES  # none is longer than 200 tokens


def test_train_split_is_never_listed(monkeypatch):
    """The train split streams from its files: it never goes through the list readers,
    and the dataset's graph holds file names, not the 29,000 sentences (the old
    `from_tensor_slices` graph was ~4 MB)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the train split was read into Python lists")

    monkeypatch.setattr(streaming, "read_lines", refuse)
    monkeypatch.setattr(streaming, "read_parallel", refuse)
    config = parse_config({"data": {"source": "multi30k"}}).data
    dataset = corpus.split_pairs(config, "train", seed=0)
    assert len(dataset._as_serialized_graph().numpy()) < 100_000
    assert sum(1 for _ in dataset.batch(4096)) == 8  # 29,000 pairs
    # Each pair is kept with probability 1000 / 58,000 sentences: about 1000, never more.
    assert 850 < sum(1 for _ in corpus.vocabulary_sentences(config, 1000, seed=0)) <= 1000
    assert corpus.cache_tokens(config)  # small: tokens are cached after the first epoch
    tfds_config = parse_config({"data": {"source": "tfds", "tfds_name": "x"}}).data
    assert not corpus.cache_tokens(tfds_config)


def test_tfds_train_limit_takes_from_the_stream():
    sentences = {"pt": [f"frase {i}" for i in range(10)],
                 "en": [f"sentence {i}" for i in range(10)]}

    def as_dataset(self, *args, **kwargs):
        return tf.data.Dataset.from_tensor_slices(sentences)

    with tfds.testing.mock_data(as_dataset_fn=as_dataset, policy=tfds.testing.MockPolicy.USE_CODE):
        config = parse_config({"data": {"source": "tfds",
                                        "tfds_name": "ted_hrlr_translate/pt_to_en",
                                        "source_lang": "en", "target_lang": "pt",
                                        "train_limit": 4}}).data
        limited = corpus.split_pairs(config, "train")
        assert isinstance(limited, tf.data.Dataset)
        assert _pairs(limited) == list(zip(sentences["en"], sentences["pt"]))[:4]
        parts = [_pairs(corpus.split_pairs(config, "train", num_workers=2, worker_index=i))
                 for i in range(2)]
        assert parts == [[("sentence 0", "frase 0"), ("sentence 2", "frase 2")],
                         [("sentence 1", "frase 1"), ("sentence 3", "frase 3")]]
        assert corpus.train_pairs_count(config) == 4


def _vocabulary_characters(tokenizer, characters):
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_proto=tokenizer.model_proto)
    pieces = {processor.id_to_piece(i) for i in range(processor.get_piece_size())}
    return {c for c in characters if c in pieces or "▁" + c in pieces}


def test_vocabulary_learns_from_a_bounded_seeded_sample(tmp_path):
    """400 pairs whose source lines each hold one character found nowhere else: every
    character a sentence brings is in the vocabulary (character_coverage 1.0), so the
    vocabulary shows how many source sentences SentencePiece saw."""
    characters = [chr(0x4E00 + i) for i in range(400)]
    for j in range(4):
        part = characters[j * 100:(j + 1) * 100]
        _write(tmp_path / f"v.{j}.en.gz", [f"the dog {c} runs" for c in part])
        _write(tmp_path / f"v.{j}.de.gz", ["der Hund läuft"] * 100)
    config = _text_config(str(tmp_path / "v.*.en.gz"), str(tmp_path / "v.*.de.gz"))

    def learned(sample, seed):
        sentences = list(corpus.vocabulary_sentences(config, sample, seed=seed))
        assert len(sentences) <= sample
        tokenizer = SubwordTokenizer.train(sentences, vocab_size=500, input_sentence_size=sample)
        return sentences, tokenizer

    sample, tokenizer = learned(150, seed=1)
    seen = _vocabulary_characters(tokenizer, characters)
    assert 0 < len(seen) <= 150 // 2 * 1.5  # ~75 pairs (Bernoulli), never the whole corpus
    assert seen == {c for s in sample for c in s if c in set(characters)}
    again, tokenizer_again = learned(150, seed=1)
    assert again == sample and tokenizer_again.model_proto == tokenizer.model_proto
    assert learned(150, seed=2)[0] != sample
    everything, tokenizer = learned(1000, seed=1)  # the bound above the corpus: all of it
    assert len(everything) == 800
    assert _vocabulary_characters(tokenizer, characters) == set(characters)


def test_sample_sentences_config_key():
    assert parse_config({}).tokenizer.sample_sentences == 2_000_000
    with pytest.raises(ConfigError, match=r"tokenizer\.sample_sentences must be > 100"):
        parse_config({"tokenizer": {"sample_sentences": 50}})
    assert parse_config({"data": {"cache_tokens": False}}).data.cache_tokens is False


def test_tfds_workers_read_even_splits_with_seeded_file_order():
    sentences = {"pt": ["frase"] * 4, "en": ["sentence"] * 4}
    asked = []

    def as_dataset(self, *args, split=None, shuffle_files=None, read_config=None, **kwargs):
        asked.append((split, shuffle_files, read_config.shuffle_seed))
        return tf.data.Dataset.from_tensor_slices(sentences)

    with tfds.testing.mock_data(as_dataset_fn=as_dataset, policy=tfds.testing.MockPolicy.USE_CODE):
        config = parse_config({"data": {"source": "tfds",
                                        "tfds_name": "ted_hrlr_translate/pt_to_en",
                                        "source_lang": "en", "target_lang": "pt"}}).data
        dataset = corpus.split_pairs(config, "train", seed=3, num_workers=2, worker_index=1)
    split, shuffle_files, seed = asked[-1]
    assert (split.split, split.index, split.count) == ("train", 1, 2)
    assert shuffle_files and seed == 3
    assert _auto_shard_policy(dataset) == tf.data.experimental.AutoShardPolicy.OFF


def test_train_runs_on_sharded_files(shards, tmp_path):
    """`train` end to end on 4 .gz shards: the vocabulary from a bounded sample (300 of the
    400 sentences), the epoch length from one streamed pass, then `fit`."""
    import json

    from keras_transformer.training.train import train

    config = parse_config({
        "model": {"preset": "tiny", "d_model": 16, "d_ff": 32, "num_heads": 2,
                  "num_encoder_layers": 1, "num_decoder_layers": 1},
        "data": {"source": "text", "train_source": shards[0], "train_target": shards[1],
                 "valid_source": shards[0].replace("*", "0"),
                 "valid_target": shards[1].replace("*", "0"), "max_length": 64},
        "tokenizer": {"vocab_size": 200, "sample_sentences": 300},
        "training": {"epochs": 1, "batch_tokens": 1024, "warmup_steps": 10,
                     "average_last": 0, "shuffle_buffer": 100},
    })
    run_dir = str(tmp_path / "run")
    _, tokenizer, summary = train(config, run_dir, verbose=0)
    assert os.path.exists(os.path.join(run_dir, "tokenizer.model"))
    assert corpus.cache_tokens(config.data)  # small files: tokens are cached
    assert summary["steps"] == summary["steps_per_epoch"] > 0
    assert summary["target_tokens_per_epoch"] > 0
    with open(os.path.join(run_dir, "summary.json")) as f:
        assert json.load(f)["vocab_size"] == tokenizer.vocab_size
