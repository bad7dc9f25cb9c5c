"""Training: data pipelines, tokenizer, distributed `model.fit`, evaluation.

Installed as `keras_transformer.training`.
"""
