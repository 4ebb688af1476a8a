"""Adaptation methods, one module each, registered by name in ``METHODS``.

``fit_method(name, model, data, out_dir)`` trains a method with the shared engine
(``vlmood.train.engine``) and writes an adapter artifact; ``load_adapter(dir, model)`` loads it
back onto the same base model. See :mod:`vlmood.methods.base` for the artifact format.
"""

# each module registers its methods on import
from vlmood.methods import arf, cocoop, coop, finetune, locoop, probe, ueo, wise_ft  # noqa: F401
from vlmood.methods.base import (
    ADAPTER_FORMAT,
    METHODS,
    Adapter,
    AdapterError,
    AdapterMismatchError,
    Method,
    TrainData,
    create_method,
    fit_method,
    list_methods,
    load_adapter,
    prepare_data,
    read_adapter_info,
    register_method,
    save_adapter,
)

__all__ = [
    "ADAPTER_FORMAT",
    "METHODS",
    "Adapter",
    "AdapterError",
    "AdapterMismatchError",
    "Method",
    "TrainData",
    "create_method",
    "fit_method",
    "list_methods",
    "load_adapter",
    "prepare_data",
    "read_adapter_info",
    "register_method",
    "save_adapter",
]
