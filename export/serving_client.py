"""Translate through stock TF Serving's REST API with the ids-only SavedModel.

Needs only the standard library and `sentencepiece` (no TensorFlow, no tensorflow-text,
not this project), so the file can be copied next to any client. It tokenizes with the
SavedModel's own `assets/tokenizer.model`, POSTs the ids to `:predict` and turns the ids
that come back into text.

Example (TF Serving serving `translator_ids` as model "translator" on port 8501):

    $ python serving_client.py --model-dir translator_ids "A dog runs in the snow."
    Ein Hund rennt im Schnee.
"""

import argparse
import json
import os
import urllib.request

import sentencepiece

# The special ids of keras_transformer.tokenizer (a client must not need the project).
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
URL = "http://localhost:8501/v1/models/translator:predict"


def load_tokenizer(model_dir):
    """The SentencePiece processor of an exported SavedModel directory."""
    path = os.path.join(model_dir, "assets", "tokenizer.model")
    return sentencepiece.SentencePieceProcessor(model_file=path)


def build_request(sentences, sp, signature="serving_default"):
    """The `:predict` body for `sentences` in the columnar ("inputs") form: one
    `source_ids [batch, length]` tensor, rows padded with 0 to the longest (at least 1).

    >>> build_request(["A dog."], sp)                    # doctest: +SKIP
    {'signature_name': 'serving_default', 'inputs': {'source_ids': [[4, 37, 5]]}}
    """
    rows = [sp.encode(sentence) for sentence in sentences]
    width = max([1, *map(len, rows)])
    padded = [row + [PAD_ID] * (width - len(row)) for row in rows]
    return {"signature_name": signature, "inputs": {"source_ids": padded}}


def detokenize(ids, sp):
    """Text of output ids: read up to the first eos; pad, unk, bos and eos are dropped."""
    ids = list(ids)
    if EOS_ID in ids:
        ids = ids[: ids.index(EOS_ID)]
    return sp.decode([i for i in ids if i > EOS_ID])


def parse_response(response, sp):
    """Translations from a decoded `:predict` answer, columnar (`{"outputs": {"ids": ...}}`)
    or row form (`{"predictions": [{"ids": ..., "scores": ...}, ...]}`).

    >>> answer = {"outputs": {"ids": [[41, 9, 3, 0]], "scores": [-1.2]}}
    >>> parse_response(answer, sp)                       # doctest: +SKIP
    ['Ein Hund.']
    """
    if "outputs" in response:
        rows = response["outputs"]["ids"]
    else:
        rows = [prediction["ids"] for prediction in response["predictions"]]
    return [detokenize(row, sp) for row in rows]


def translate(sentences, sp, url=URL, signature="serving_default", timeout=60):
    """Translate a list of strings with the served model (beam search, or "greedy")."""
    if not sentences:  # TF Serving cannot tell the shape of an empty list
        return []
    body = json.dumps(build_request(sentences, sp, signature)).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return parse_response(json.load(reply), sp)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True,
                        help="the exported SavedModel directory (for assets/tokenizer.model)")
    parser.add_argument("--url", default=URL, help="the REST :predict address")
    parser.add_argument("--greedy", action="store_true", help="greedy instead of beam search")
    parser.add_argument("sentences", nargs="+")
    args = parser.parse_args(argv)
    signature = "greedy" if args.greedy else "serving_default"
    for line in translate(args.sentences, load_tokenizer(args.model_dir), args.url, signature):
        print(line)


if __name__ == "__main__":
    main()
