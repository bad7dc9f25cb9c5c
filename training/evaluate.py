"""Translate a split and score it with sacreBLEU (cased by default, as in the paper)."""

import json
import os

import keras
import numpy as np
import sacrebleu

from keras_transformer.model import Transformer
from keras_transformer.tokenizer import SubwordTokenizer
from keras_transformer.training import corpus
from keras_transformer.training.config import load_config
from keras_transformer.translation import TextTranslator


def translate_lines(translate, lines, batch_size=64, verbose=1):
    """Translate a list of strings with `translate(list_of_str) -> array of bytes`.

    Sentences are sorted by length so each batch pads little; a Keras progress bar
    counts sentences. Output order matches input order.
    """
    order = np.argsort([len(line) for line in lines], kind="stable")
    outputs = [None] * len(lines)
    progress = keras.utils.Progbar(len(lines), unit_name="sentence", verbose=verbose)
    for start in range(0, len(lines), batch_size):
        chunk = order[start:start + batch_size]
        for index, text in zip(chunk, translate([lines[i] for i in chunk])):
            outputs[index] = text.decode("utf-8") if isinstance(text, bytes) else str(text)
        progress.add(len(chunk))
    return outputs


def bleu(hypotheses, references, lowercase=False):
    """Corpus BLEU with sacreBLEU's default 13a tokenization; returns (score, signature)."""
    metric = sacrebleu.metrics.BLEU(lowercase=lowercase)
    result = metric.corpus_score(hypotheses, [references])
    return result, str(metric.get_signature())


def load_run(run_dir):
    """(RunConfig, model, tokenizer) of a training run.

    The model is `model.keras`; for a run stopped before it finished, a freshly
    initialised model of the run's configuration (to load checkpoints into).
    """
    config = load_config(os.path.join(run_dir, "config.yaml"))
    tokenizer = SubwordTokenizer.load(os.path.join(run_dir, "tokenizer.model"))
    path = os.path.join(run_dir, "model.keras")
    if os.path.exists(path):
        model = keras.models.load_model(path)
    else:
        model = Transformer(config.model.replace(vocab_size=tokenizer.vocab_size))
    return config, model, tokenizer


def evaluate_run(run_dir, split="test", beam_size=None, lowercase=None, limit=None,
                 verbose=1, translate=None, model_name=None):
    """Translate a split of the run's corpus and write `{split}.hyp` and `bleu.{split}.json`.

    `translate` (`list_of_str -> strings`, e.g. an exported SavedModel or .tflite file,
    see `keras_transformer.export`) replaces the run's Keras model; the files are then
    named `{split}.{model_name}.hyp` and `bleu.{split}.{model_name}.json`.
    """
    config = load_config(os.path.join(run_dir, "config.yaml"))
    evaluation = config.evaluation
    beam_size = beam_size or evaluation.beam_size
    lowercase = evaluation.lowercase if lowercase is None else lowercase
    if translate is None:
        translate = _run_translator(run_dir, beam_size, evaluation)
        model_name = None
    suffix = f".{model_name}" if model_name else ""
    sources, references = corpus.split_lines(config.data, split)
    if limit:
        sources, references = sources[:limit], references[:limit]

    hypotheses = translate_lines(translate, sources, evaluation.batch_size, verbose)
    result, signature = bleu(hypotheses, references, lowercase)
    with open(os.path.join(run_dir, f"{split}{suffix}.hyp"), "w", encoding="utf-8") as f:
        f.writelines(h + "\n" for h in hypotheses)
    report = {"split": split, "sentences": len(sources), "beam_size": beam_size,
              "alpha": evaluation.alpha, "model": model_name or "model.keras",
              "bleu": round(result.score, 2), "signature": signature, "detail": str(result)}
    with open(os.path.join(run_dir, f"bleu.{split}{suffix}.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def _run_translator(run_dir, beam_size, evaluation):
    _, model, tokenizer = load_run(run_dir)
    translator = TextTranslator(model, tokenizer, max_extra_length=evaluation.max_extra_length)

    def translate(batch):
        return translator.translate(batch, beam_size, evaluation.alpha).numpy()

    return translate
