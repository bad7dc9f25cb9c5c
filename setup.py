"""keras-transformer: the Transformer of "Attention Is All You Need" in Keras 3."""

from setuptools import setup
from setuptools.command.develop import develop


class _NoLegacyDevelop(develop):
    """An old pip (before 21.3, or with setuptools before 64) installs `-e .` through
    `setup.py develop`, which puts the repository on the path instead of honouring
    `package_dir`: `keras_transformer.training` would not import. Refuse it in one line."""

    def run(self):
        raise SystemExit("keras-transformer: this pip/setuptools is too old for an editable "
                         "install of this layout; run `python -m pip install --upgrade pip "
                         "setuptools` and install again")


PACKAGES = [
    "keras_transformer",
    "keras_transformer.layers",
    "keras_transformer.training",
    "keras_transformer.export",
]

setup(
    name="keras-transformer",
    version="0.1.0",
    description="The Transformer of 'Attention Is All You Need' in Keras 3 on TensorFlow.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=PACKAGES,
    # training/ and export/ live at the top of the repository but install inside the
    # package, so site-packages never gets generic `training` / `export` modules.
    package_dir={
        "keras_transformer": "keras_transformer",
        "keras_transformer.training": "training",
        "keras_transformer.export": "export",
    },
    package_data={"keras_transformer.training": ["configs/*.yaml", "data/multi30k/*"]},
    install_requires=[
        "tensorflow==2.21.*",
        "keras==3.15.*",
        "tensorflow-text==2.21.*",
        "tensorflow-datasets>=4.9",
        "sacrebleu>=2.4",
        "sentencepiece>=0.2",
        "pyyaml>=6",
        "matplotlib>=3.7",
        "tensorboard>=2.20",
        "ai-edge-litert==2.3.*",  # `translate` / `evaluate` run .tflite files in LiteRT
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis", "nbclient", "nbformat",
                 "ipykernel"],
        "bench": ["keras-hub==0.32.*", "ctranslate2==4.8.*"],
    },
    cmdclass={"develop": _NoLegacyDevelop},
    entry_points={"console_scripts": ["keras-transformer=keras_transformer.cli:main"]},
)
