"""Shared subword vocabulary: SentencePiece (unigram) learned here, applied in-graph.

Training uses the `sentencepiece` library; tokenization and detokenization run as
tensorflow-text ops (`FastSentencepieceTokenizer`), so the same vocabulary works inside
tf.data, inside a SavedModel and inside TFLite (through tf-text's custom-op registrar).
The unigram model type is used because FastSentencepieceTokenizer reproduces
SentencePiece's segmentation exactly for it (it does not for BPE models).

Special ids: pad 0, unk 1, bos 2, eos 3.
"""

import io

import tensorflow as tf
import tensorflow_text as tf_text

from keras_transformer.quiet import captured_stderr

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


class SubwordTokenizer(tf.Module):
    """Text ↔ subword ids with one vocabulary shared by source and target languages.

    Example:
    >>> tokenizer = SubwordTokenizer.train(["a small test", "ein kleiner Test"] * 50,
    ...                                    vocab_size=16)
    >>> ids = tokenizer.tokenize(["a small test"])           # RaggedTensor of int32
    >>> tokenizer.detokenize(ids).numpy()
    array([b'a small test'], dtype=object)
    """

    def __init__(self, model_proto: bytes, name="subword_tokenizer"):
        super().__init__(name=name)
        self.model_proto = bytes(model_proto)
        self.fast = tf_text.FastSentencepieceTokenizer(self.model_proto)
        self.vocab_size = int(self.fast.vocab_size())

    @classmethod
    def train(cls, sentences, vocab_size=8000, input_sentence_size=2_000_000):
        """Learn a unigram SentencePiece model from an iterable of strings."""
        import sentencepiece

        buffer = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=buffer, vocab_size=vocab_size,
            model_type="unigram", character_coverage=1.0, normalization_rule_name="identity",
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            input_sentence_size=input_sentence_size, shuffle_input_sentence=True,
            hard_vocab_limit=False, minloglevel=2,
        )
        return cls(buffer.getvalue())

    @classmethod
    def load(cls, path):
        with tf.io.gfile.GFile(path, "rb") as f:
            return cls(f.read())

    def save(self, path):
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(self.model_proto)

    def pieces(self, ids):
        """Subword strings of a sequence of ids (for plot labels), with `<s>`, `</s>`, `<pad>`."""
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor(model_proto=self.model_proto)
        names = {PAD_ID: "<pad>", BOS_ID: "<s>", EOS_ID: "</s>"}
        return [names.get(int(i)) or processor.id_to_piece(int(i)) for i in ids]

    def tokenize(self, text):
        """Strings `[batch]` → RaggedTensor of int32 ids, without bos/eos."""
        return tf.cast(self.fast.tokenize(text), tf.int32)

    def sampler(self, alpha):
        """A function strings `[batch]` → RaggedTensor of int32 ids that samples each
        sentence's segmentation from the unigram model (subword regularization, Kudo 2018),
        for training only; translating uses `tokenize`'s single best segmentation.

        `alpha` sharpens the sampling distribution (probabilities to the power `alpha`,
        over all segmentations): small values sample rare, finer segmentations often,
        large ones stay near the best. The samples are not seeded (the op draws its own).

        Example:
        >>> tokenizer = SubwordTokenizer.train(["a small test", "ein kleiner Test"] * 50,
        ...                                    vocab_size=16)
        >>> ids = tokenizer.sampler(alpha=0.3)(["a small test"])
        >>> tokenizer.detokenize(ids).numpy()
        array([b'a small test'], dtype=object)
        """
        # Kept off the module (a local): the exported SavedModel holds only `fast`. Loading
        # the model logs an INFO line from C++ ("precompiled_charsmap is empty").
        with captured_stderr():
            sampling = tf_text.SentencepieceTokenizer(self.model_proto, out_type=tf.int32,
                                                      nbest_size=-1, alpha=alpha)
        return sampling.tokenize

    def source_ids(self, text, max_length=None):
        """Strings `[batch]` → encoder input: dense int32 ids `[batch, length]`, pad 0,
        no bos/eos, each cut to `max_length` tokens (None: not cut)."""
        ids = self.tokenize(text)
        if max_length is not None:
            ids = ids[:, :max_length]
        return ids.to_tensor(default_value=PAD_ID)

    def target_in_ids(self, text):
        """Strings `[batch]` → teacher-forced decoder input: bos, then the ids, pad 0."""
        ids = self.tokenize(text)
        bos = tf.fill([ids.nrows(), 1], tf.constant(BOS_ID, tf.int32))
        return tf.concat([bos, ids], axis=1).to_tensor(default_value=PAD_ID)

    def detokenize(self, ids):
        """Ids (dense `[batch, length]` or ragged) → strings `[batch]`.

        Dense ids are read up to the first eos; pad, unk, bos and eos never reach the text.
        """
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.convert_to_tensor(ids)
        return self.fast.detokenize(tf.ragged.boolean_mask(ids, text_mask(ids)))


def text_mask(ids):
    """Which of `ids` (`[..., length]`, dense or ragged) reach the text: those before the
    first eos that are not pad, unk, bos or eos. The one rule for ids → text.

    Example:
    >>> text_mask(tf.constant([[2, 7, 8, 3, 9, 0]])).numpy()
    array([[False,  True,  True, False, False, False]])
    """
    eos_seen = tf.cumsum(tf.cast(tf.equal(ids, EOS_ID), tf.int32), axis=-1)
    return tf.logical_and(tf.equal(eos_seen, 0), ids > EOS_ID)
