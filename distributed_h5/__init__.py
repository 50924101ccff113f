"""Train video classifiers on HDF5 files larger than memory, on many GPUs with Horovod or JAX.

The public API: :class:`ShardedSequence`, :func:`train_model`, :class:`DatasetError`,
:func:`describe`, :func:`make_synthetic`, :func:`init_engine`; the data order lives in
:mod:`distributed_h5.sharding`.
"""

from .dataset import DatasetError, DatasetInfo, describe
from .synthetic import make_synthetic

__version__ = "0.1.0"
__all__ = ["DatasetError", "DatasetInfo", "ShardedSequence", "describe", "evaluate_model", "init_engine",
           "make_synthetic", "train_model"]


def __getattr__(name):
    # These import Keras (and TensorFlow); load them only when asked for, so that
    # `distributed-h5 inspect` and the pure modules start fast.
    if name == "ShardedSequence":
        from .sequence import ShardedSequence

        return ShardedSequence
    if name in ("train_model", "init_engine"):
        from . import training

        return getattr(training, name)
    if name == "evaluate_model":
        from .evaluation import evaluate_model

        return evaluate_model
    raise AttributeError(f"module 'distributed_h5' has no attribute {name!r}")
