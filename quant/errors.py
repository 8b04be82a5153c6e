"""Typed errors of floe.quant. Callers match on the type, never on the message."""


class QuantError(ValueError):
    """Base class of every error floe.quant raises on bad input."""


class ModelNotFoundError(QuantError):
    """The model directory is missing or holds no config.json / weights."""


class UnsupportedArchitectureError(QuantError):
    """The checkpoint's architecture is not one this method handles."""


class UnsupportedBitsError(QuantError):
    """The requested bit width (or group size) is not supported by the method."""


class EmptyCalibrationError(QuantError):
    """A method that needs calibration text got none (or only blank lines)."""


class UnknownMethodError(QuantError):
    """No method is registered under that name; the message lists the registered ones."""


class OutputExistsError(QuantError):
    """The output directory exists and overwrite was not requested."""


class InvalidConfigError(QuantError):
    """A method config has a field of the wrong type or out of range."""
