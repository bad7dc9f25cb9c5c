"""Export: SavedModel and TFLite translators. Installed as `keras_transformer.export`."""
