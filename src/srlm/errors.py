"""The one exception type users see: the CLI prints its message and exits with status 2, without a traceback."""


class SrlmError(Exception):
    """A problem with the user's input, config or environment, described so that they can fix it."""


class DataError(SrlmError):
    """A data file is missing, malformed, or a record breaks its schema. The message names file, line and field."""


class ConfigError(SrlmError):
    """A config key is unknown or has the wrong type. The message names the key."""
