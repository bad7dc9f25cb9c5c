"""Training: data pipelines, tokenizer, distributed `model.fit`, evaluation.

Installed as `keras_transformer.training`. A run is driven by a YAML config:

- `load_config(path)` → `RunConfig` (validated; errors are one-line `ConfigError`s);
- `train(config, run_dir)` → `(model, tokenizer, summary)`, writing the run directory
  (checkpoints, `model.keras`, `translator.keras`, `summary.json`);
- `evaluate_run(run_dir)` → sacreBLEU report; `load_run(run_dir)` → `(config, model,
  tokenizer)`.
"""

from keras_transformer.training.config import ConfigError, RunConfig, RunError, load_config
from keras_transformer.training.evaluate import evaluate_run, load_run
from keras_transformer.training.train import train

__all__ = ["ConfigError", "RunConfig", "RunError", "evaluate_run", "load_config", "load_run",
           "train"]
