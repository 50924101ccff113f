"""Train video classifiers on HDF5 files larger than memory, on many GPUs with Horovod or JAX.

The public API: :class:`ShardedSequence`, :func:`train_model`, :class:`DatasetError`,
:func:`describe`, :func:`make_synthetic`, :func:`init_engine`; the data order lives in
:mod:`distributed_h5.sharding`.
"""

import importlib as _importlib
import sys as _sys

__version__ = "0.1.0"

from .data.dataset import DatasetError, DatasetInfo, describe  # noqa: E402
from .data.synthetic import make_synthetic  # noqa: E402

# Where modules lived before data/ and engines/: the old names still import (for one release,
# 0.1.x), as the same module objects.
MOVED = {"sharding": "data.sharding", "dataset": "data.dataset", "reader": "data.reader", "augment": "data.augment",
         "synthetic": "data.synthetic", "convert": "data.convert", "outputs": "data.outputs",
         "collective": "engines.collective", "horovod": "engines.horovod", "jaxengine": "engines.jax",
         "runtime": "engines.launcher"}
for _old, _new in MOVED.items():
    _sys.modules[f"{__name__}.{_old}"] = globals()[_old] = _importlib.import_module(f".{_new}", __name__)
__all__ = ["DatasetError", "DatasetInfo", "ShardedSequence", "describe", "evaluate_model", "init_engine",
           "make_synthetic", "train_model"]


def __getattr__(name):
    # These import Keras (and TensorFlow); load them only when asked for, so that
    # `distributed-h5 inspect` and the pure modules start fast.
    if name == "ShardedSequence":
        from .sequence import ShardedSequence

        return ShardedSequence
    if name == "train_model":
        from .training import train_model

        return train_model
    if name == "init_engine":
        from .engines import init_engine

        return init_engine
    if name == "evaluate_model":
        from .evaluation import evaluate_model

        return evaluate_model
    raise AttributeError(f"module 'distributed_h5' has no attribute {name!r}")
