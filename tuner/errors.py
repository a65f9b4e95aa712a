"""The one exception type for bad user input (the foundation: imports nothing of the project)."""


class ConfigError(ValueError):
    """Bad input a user can fix: the message names the problem and the fix, in one line."""
