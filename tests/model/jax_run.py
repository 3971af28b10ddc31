"""Runs a module or a script under the JAX backend with TensorFlow blocked.

    KERAS_BACKEND=jax python tests/model/jax_run.py -m model.pretrain ARGS
    KERAS_BACKEND=jax python tests/model/jax_run.py SCRIPT.py ARGS

`tensorflow` and `tensorflow_text` are made unimportable before anything
else is imported, as on a machine that has only JAX: any import of them on
the JAX path fails loudly instead of passing because TF happens to be
installed here.
"""

import runpy
import sys

for name in ("tensorflow", "tensorflow_text"):
    sys.modules[name] = None

if __name__ == "__main__":
    if sys.argv[1] == "-m":
        module = sys.argv[2]
        sys.argv = [module] + sys.argv[3:]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        script = sys.argv[1]
        sys.argv = sys.argv[1:]
        runpy.run_path(script, run_name="__main__")
