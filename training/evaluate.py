"""Translate a split and score it with sacreBLEU (cased by default, as in the paper)."""

import json
import os

import keras
import sacrebleu

from keras_transformer.model import Transformer
from keras_transformer.tokenizer import SubwordTokenizer
from keras_transformer.training import corpus
from keras_transformer.training.averaging import list_checkpoints
from keras_transformer.training.config import RunError, load_config
from keras_transformer.translation import TextTranslator, translate_lines


def bleu(hypotheses, references, lowercase=False):
    """Corpus BLEU with sacreBLEU's default 13a tokenization; returns (score, signature)."""
    metric = sacrebleu.metrics.BLEU(lowercase=lowercase)
    result = metric.corpus_score(hypotheses, [references])
    return result, str(metric.get_signature())


def other_scores(hypotheses, references):
    """Lowercased BLEU and chrF (sacreBLEU defaults), reported beside the main BLEU."""
    lowercased, _ = bleu(hypotheses, references, lowercase=True)
    chrf = sacrebleu.metrics.CHRF()
    return {"bleu_lowercase": round(lowercased.score, 2),
            "chrf": round(chrf.corpus_score(hypotheses, [references]).score, 2),
            "chrf_signature": str(chrf.get_signature())}


def load_run(run_dir, checkpoint=None, allow_untrained=False):
    """(RunConfig, model, tokenizer) of a training run.

    The model is the run's `model.keras`, or with `checkpoint` ("latest" or the path of a
    `.weights.h5` file) a model of the run's configuration with those weights; it
    computes in float32 whatever precision the run trained in. A run
    without model.keras (stopped before it finished) is a RunError: silently translating
    or exporting with random weights would be worse. `allow_untrained=True` returns a
    freshly initialised model instead, for callers that load weights themselves
    (checkpoint averaging).
    """
    config = load_config(os.path.join(run_dir, "config.yaml"))
    vocabulary = os.path.join(run_dir, "tokenizer.model")
    if not os.path.exists(vocabulary):  # tf.io.gfile would raise a TensorFlow NotFoundError
        raise RunError(f"{run_dir} has no tokenizer.model: not a training run directory")
    tokenizer = SubwordTokenizer.load(vocabulary)
    path = os.path.join(run_dir, "model.keras")
    if checkpoint:
        model = build_run_model(config, tokenizer)
        _load_checkpoint(model, resolve_checkpoint(run_dir, checkpoint))
    elif os.path.exists(path):
        # A run trained in mixed precision is decoded, scored and exported in float32.
        model = keras.models.load_model(path).with_dtype("float32")
    elif allow_untrained:
        model = build_run_model(config, tokenizer)
    else:
        raise RunError(
            f"{run_dir} has no model.keras (the run did not finish): resume it with "
            f"`keras-transformer train --config {os.path.join(run_dir, 'config.yaml')} "
            f"--out {run_dir}`, or average its "
            f"checkpoints with `keras-transformer average-checkpoints --run {run_dir}`, or "
            f"pass --checkpoint latest|PATH to use a checkpoint")
    _check_vocabulary(model, tokenizer, run_dir)
    return config, model, tokenizer


def build_run_model(config, tokenizer):
    """A freshly initialised model of a run's configuration and vocabulary."""
    # The learned vocabulary can be smaller than tokenizer.vocab_size asked for (training
    # builds the model the same way).
    return Transformer(config.model.replace(vocab_size=tokenizer.vocab_size))


def resolve_checkpoint(run_dir, checkpoint):
    """The path of `checkpoint`: "latest" (the run's newest) or a `.weights.h5` file."""
    if checkpoint == "latest":
        paths = list_checkpoints(os.path.join(run_dir, "checkpoints"))
        if not paths:
            raise RunError(f"--checkpoint latest: {run_dir}/checkpoints has no "
                           f"ckpt-*.weights.h5 file")
        return paths[-1]
    if not checkpoint.endswith(".weights.h5") or not os.path.isfile(checkpoint):
        raise RunError(f"--checkpoint {checkpoint}: not 'latest' nor an existing "
                       f".weights.h5 file")
    return checkpoint


def _load_checkpoint(model, path):
    try:
        model.load_weights(path)
    except (ValueError, KeyError, OSError) as e:
        # Keras explains a mismatch over several lines; its first sentence is enough here.
        reason = (str(e).splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise RunError(f"--checkpoint {path} does not fit the run's model ({reason})") from None


def _check_vocabulary(model, tokenizer, run_dir):
    if model.config.vocab_size != tokenizer.vocab_size:
        raise RunError(f"{run_dir}: tokenizer.model has {tokenizer.vocab_size} subwords but "
                       f"the model's vocab_size is {model.config.vocab_size}")


def evaluate_run(run_dir, split="test", beam_size=None, lowercase=None, limit=None,
                 verbose=1, translate=None, model_name=None, checkpoint=None):
    """Translate a split of the run's corpus and write `{split}.hyp` and `bleu.{split}.json`.

    `translate` (`list_of_str -> strings`, e.g. an exported SavedModel or .tflite file,
    see `keras_transformer.export`) replaces the run's Keras model; the files are then
    named `{split}.{model_name}.hyp` and `bleu.{split}.{model_name}.json`, and `beam_size`
    must be the beam that `translate` decodes with (None: unknown), since that is what the
    report records. `checkpoint` ("latest" or a .weights.h5 path) scores a checkpoint of
    the run instead of its model.keras.
    """
    config = load_config(os.path.join(run_dir, "config.yaml"))
    evaluation = config.evaluation
    lowercase = evaluation.lowercase if lowercase is None else lowercase
    if translate is None:
        beam_size = beam_size or evaluation.beam_size
        if checkpoint:  # report and file names name the checkpoint file, also for "latest"
            checkpoint = resolve_checkpoint(run_dir, checkpoint)
        translate = _run_translator(run_dir, beam_size, evaluation, checkpoint)
        model_name = checkpoint and os.path.basename(checkpoint)[: -len(".weights.h5")]
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
              "bleu": round(result.score, 2), "signature": signature, "detail": str(result),
              **other_scores(hypotheses, references)}
    with open(os.path.join(run_dir, f"bleu.{split}{suffix}.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def _run_translator(run_dir, beam_size, evaluation, checkpoint=None):
    _, model, tokenizer = load_run(run_dir, checkpoint)
    translator = TextTranslator(model, tokenizer, evaluation.decoding_options())

    def translate(batch):
        return translator.translate(batch, beam_size, evaluation.alpha).numpy()

    return translate
