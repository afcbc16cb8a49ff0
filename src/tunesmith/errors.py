"""Errors a user can cause. Each message is one sentence naming what to fix; the CLI prints
it without a traceback."""


class TunesmithError(Exception):
    """A problem the user can fix (bad file, unknown model, bad option)."""


class DataError(TunesmithError):
    """A data file cannot be read or converted; the message names the file, row and reason."""


class ModelError(TunesmithError):
    """A base model or run directory cannot be found or loaded."""


class ConfigError(TunesmithError):
    """A configuration value is invalid."""


class TrainError(TunesmithError):
    """Training stopped before its end (e.g. one of several training processes failed)."""
