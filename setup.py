"""Installs the `pipelines`, `model` and `configs` packages.

Dataflow workers install the same thing through `--setup_file=./setup.py`.
"""

import setuptools

# Versions seen to install and import together on Python 3.11.
REQUIRED = [
    "apache-beam[gcp]==2.77.0",
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "keras==3.15.1",
    "pyyaml>=6.0",
    "matplotlib>=3.7",
    # CRC32C of TFRecord frames in the TF-free reader (configs/crc32c.py);
    # also comes with apache-beam[gcp], named for JAX-only installs.
    "google-crc32c>=1.5",
]
# jax[cpu] tests the JAX backend of `model.pretrain` (it installs beside
# the pinned TensorFlow/Keras).
DEV = ["pytest>=8", "black>=24", "jax[cpu]==0.10.2"]

setuptools.setup(
    name="bert-beam-keras",
    version="0.1.0",
    description="Raw text to a served BERT sentiment model: Beam data jobs "
    "and Keras 3 BERT under tf.distribute.",
    packages=setuptools.find_packages(include=["pipelines*", "model*", "configs*"]),
    package_data={"configs": ["*.yaml", "*/*.yaml"]},
    python_requires=">=3.10",
    install_requires=REQUIRED,
    extras_require={"dev": DEV},
    entry_points={
        "console_scripts": [
            "bert-vocab=pipelines.vocab:main",
            "bert-pretraining-data=pipelines.pretraining_data:main",
            "bert-classification-data=pipelines.classification_data:main",
            "bert-inspect=pipelines.inspect:main",
            "bert-pretrain=model.pretrain:main",
            "bert-finetune=model.finetune:main",
            "bert-export=model.export:main",
            "bert-predict=model.predict:main",
            "bert-batch-predict=pipelines.batch_predict:main",
        ]
    },
)
