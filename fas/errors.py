"""User-facing errors: the entry scripts print these as one line (problem and fix), not a traceback."""


class FasError(Exception):
    """Base of every error whose message tells the user what is wrong and how to fix it."""


class ConfigError(FasError, ValueError):
    """A config value is missing or invalid."""


class ModelFileError(FasError, ValueError):
    """A model file cannot be used: not found, not a checkpoint or export fas reads, unsafe to load, or not
    the model the config describes. Every reader of model files raises a subclass of it."""


class TrainingDivergedError(FasError, RuntimeError):
    """The training loss stopped being a finite number (the weights diverged)."""
