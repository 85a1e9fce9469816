"""User-facing errors: the CLI prints these as one clear message, without a traceback."""


class SdloraError(Exception):
    """Base class for problems the user can fix (bad config, missing files, wrong model)."""


class ConfigError(SdloraError):
    """A config key or value is wrong."""


class DataError(SdloraError):
    """The dataset folder or one of its files is unusable."""


class ModelError(SdloraError):
    """The base model cannot be found, loaded or recognised."""


class TrainingError(SdloraError):
    """Training cannot go on (device, optimizer, numerics)."""


class LoraFileError(SdloraError):
    """A LoRA file cannot be read, is not a LoRA, or fails a compatibility check."""
