"""floe.quant: quantize and prune frozen checkpoints; every output carries ``floe_quant.json``."""

from floe.quant.api import load_for_transformers, make_config, prune, quantize
from floe.quant.errors import (
    EmptyCalibrationError,
    InvalidConfigError,
    ModelNotFoundError,
    OutputExistsError,
    QuantError,
    UnknownMethodError,
    UnsupportedArchitectureError,
    UnsupportedBitsError,
)
from floe.quant.manifest import MANIFEST_FILE, QuantManifest, read_manifest
from floe.quant.registry import MethodResult, get_method, list_methods, register_method

__all__ = [
    "quantize", "prune", "load_for_transformers", "make_config", "QuantManifest", "read_manifest",
    "MANIFEST_FILE", "register_method", "get_method", "list_methods", "MethodResult",
    "QuantError", "ModelNotFoundError", "UnsupportedArchitectureError", "UnsupportedBitsError",
    "EmptyCalibrationError", "InvalidConfigError", "UnknownMethodError", "OutputExistsError",
]
