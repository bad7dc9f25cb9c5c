"""Corpus reading, tokenizer, token-budget batching, TFDS sources, configs."""

import gzip

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_transformer.tokenizer import BOS_ID, EOS_ID, UNK_ID, SubwordTokenizer
from keras_transformer.training import corpus, data, streaming
from keras_transformer.training.config import ConfigError, load_config, parse_config

CONFIGS = "training/configs"


@pytest.fixture(scope="module")
def multi30k_sample():
    paths = streaming.multi30k_paths("train", "en", "de")
    return [lines[:3000] for lines in streaming.read_parallel(*paths)]


@pytest.fixture(scope="module")
def tokenizer(multi30k_sample):
    source, target = multi30k_sample
    return SubwordTokenizer.train(source + target, vocab_size=2000)


def test_shipped_multi30k_is_complete():
    for split, size in (("train", 29000), ("val", 1014), ("test_2016_flickr", 1000)):
        for pair in (("en", "de"), ("en", "fr")):
            source, target = streaming.read_parallel(*streaming.multi30k_paths(split, *pair))
            assert len(source) == len(target) == size


def test_tokenizer_round_trips_text(tokenizer, multi30k_sample, tmp_path):
    sentences = multi30k_sample[1][:200] + ["  ".join(multi30k_sample[1][0].split())]
    ids = tokenizer.tokenize(sentences)
    assert ids.dtype == tf.int32 and int(tf.reduce_min(ids.flat_values)) > EOS_ID
    back = [s.decode() for s in tokenizer.detokenize(ids).numpy()]
    assert back == [" ".join(s.split()) for s in sentences]  # whitespace runs collapse
    # A character never seen in training becomes unk (FastSentencepiece has no byte
    # fallback), which detokenizes to nothing.
    unseen = tokenizer.tokenize(["A 東 dog."])
    assert UNK_ID in unseen.flat_values.numpy()
    assert tokenizer.detokenize(unseen).numpy()[0].split() == [b"A", b"dog."]
    path = str(tmp_path / "tok.model")
    tokenizer.save(path)
    assert SubwordTokenizer.load(path).tokenize(sentences).to_list() == ids.to_list()


def test_detokenize_stops_at_eos_and_skips_specials(tokenizer):
    ids = tokenizer.tokenize(["A dog runs."]).to_tensor()
    dense = tf.concat([[[BOS_ID]], ids, [[EOS_ID]], ids, [[0, 0]]], axis=1)
    assert tokenizer.detokenize(dense).numpy()[0] == b"A dog runs."


@pytest.mark.parametrize("content,message", [
    (None, "no such file"),
    (b"", "empty"),
    (b"ok line\nbad \xff line\n", ":2: not valid UTF-8"),
])
def test_bad_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(streaming.DataError, match=message) as error:
        streaming.read_lines(str(path))
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_unequal_parallel_files(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n")
    with gzip.open(tmp_path / "b.txt.gz", "wt") as f:
        f.write("eins\n")
    with pytest.raises(streaming.DataError, match="has 2 lines but .*b.txt.gz has 1"):
        streaming.read_parallel(str(tmp_path / "a.txt"), str(tmp_path / "b.txt.gz"))


def test_batches_respect_budget_and_teacher_forcing(tokenizer, multi30k_sample):
    pairs = streaming.text_pairs(*multi30k_sample)
    batches = data.make_batches(pairs, tokenizer, batch_tokens=1024, max_length=40,
                                shuffle_buffer=1000, seed=0)
    seen = 0
    for (source, target_in), target_out in batches:
        assert source.shape[0] * source.shape[1] <= 1024
        assert source.shape[1] == target_in.shape[1]  # padded to the same bucket boundary
        assert np.all(target_in[:, 0] == BOS_ID)
        lengths = np.sum(target_out.numpy() != 0, axis=1)
        rows = np.arange(len(lengths))
        assert np.all(target_out.numpy()[rows, lengths - 1] == EOS_ID)
        np.testing.assert_array_equal(target_in[:, 1:][target_out[:, :-1] != EOS_ID],
                                      target_out[:, :-1][target_out[:, :-1] != EOS_ID])
        seen += source.shape[0]
    assert 2900 < seen <= 3000  # only over-long pairs are dropped


def test_sampled_segmentations_keep_the_text_and_change_every_pass(tokenizer, multi30k_sample):
    # Subword regularization: each pass reads the same sentences, each in a segmentation
    # drawn afresh (finer on average than the best one), and the ids still spell the text.
    source, target = ([" ".join(line.split()) for line in lines[:300]]  # as detokenized
                      for lines in multi30k_sample)
    pairs = streaming.text_pairs(source, target)
    batches = data.make_batches(pairs, tokenizer, batch_tokens=1024, max_length=100,
                                sampling_alpha=0.3)

    def targets():  # one pass: text → the ids of its target_out
        sentences = {}
        for _, target_out in batches:
            for row in target_out.numpy():
                ids = tuple(int(i) for i in row if i != 0)
                sentences[tokenizer.detokenize([ids]).numpy()[0].decode()] = ids
        return sentences

    first, second = targets(), targets()
    assert set(first) == set(target)  # the text of every sentence, none lost
    best = {text: tuple(ids) + (EOS_ID,) for text, ids in
            zip(target, tokenizer.tokenize(target).to_list())}
    assert sum(first[t] != best[t] for t in target) > len(target) // 2
    assert set(second) == set(target)
    assert sum(first[t] != second[t] for t in target) > len(target) // 2
    assert sum(map(len, first.values())) > sum(map(len, best.values()))
    with pytest.raises(ConfigError, match="sampling_alpha must be > 0"):
        parse_config({"tokenizer": {"sampling_alpha": 0.0}})


def test_tfds_source_goes_through_tfds_load():
    sentences = {"pt": ["olá mundo", "bom dia"], "en": ["hello world", "good morning"]}

    def as_dataset(self, *args, **kwargs):
        return tf.data.Dataset.from_tensor_slices(sentences)

    with tfds.testing.mock_data(as_dataset_fn=as_dataset, policy=tfds.testing.MockPolicy.USE_CODE):
        config = parse_config({"data": {"source": "tfds", "tfds_name": "ted_hrlr_translate/pt_to_en",
                                        "source_lang": "en", "target_lang": "pt"}})
        source, target = corpus.split_lines(config.data, "train")
        with pytest.raises(streaming.DataError, match="languages"):
            streaming.tfds_pairs("ted_hrlr_translate/pt_to_en", "train", "en", "fr")
    assert source == sentences["en"] and target == sentences["pt"]


def test_tfds_without_download_stops_at_the_download_boundary(tmp_path):
    with pytest.raises(Exception, match="(?i)download|not found|does not exist"):
        streaming.tfds_pairs("ted_hrlr_translate/pt_to_en", "train", "pt", "en",
                        data_dir=str(tmp_path), download=False)


def test_config_unknown_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("training:\n  epochs: 3\n  learnin_rate: 0.1\n")
    with pytest.raises(ConfigError, match="training: unknown key 'learnin_rate'"):
        load_config(str(path))
    path.write_text("modle:\n  preset: tiny\n")
    with pytest.raises(ConfigError, match="unknown section 'modle'"):
        load_config(str(path))


@pytest.mark.parametrize("name,params", [("multi30k_en_de", 2.35e6), ("multi30k_en_de_quick", 2.35e6),
                                         ("tiny", 0.07e6),
                                         ("wmt14_en_de_base", 63e6), ("wmt14_en_de_big", 214e6)])
def test_shipped_configs_load(name, params):
    config = load_config(f"{CONFIGS}/{name}.yaml")
    assert abs(config.model.num_parameters() / params - 1) < 0.1
