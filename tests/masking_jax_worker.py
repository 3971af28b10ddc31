"""Runs `DynamicMasker.mask` under JAX (jitted) on every masking case.

    KERAS_BACKEND=jax python tests/masking_jax_worker.py OUT.npz

Started by `tests/test_masking_rule.py` (its pytest process is on the
TensorFlow backend). `tensorflow` and `tensorflow_text` are made
unimportable first, as on a JAX-only machine, so any TF import on the JAX
masking path fails loudly. Writes `CASE/i` arrays (the outputs of
`masking_properties.run_keras`, i = 0..3).
"""

import sys

for _name in ("tensorflow", "tensorflow_text"):
    sys.modules[_name] = None


def main(path):
    import keras
    import numpy as np

    import masking_properties as props

    if keras.backend.backend() != "jax":
        sys.exit(f"error: KERAS_BACKEND is {keras.backend.backend()!r}, want 'jax'")
    arrays = {}
    for case in props.CASES:
        for i, value in enumerate(props.run_keras(case)):
            arrays[f"{case}/{i}"] = value
    np.savez(path, **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
