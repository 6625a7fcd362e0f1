"""The one exception type that reaches people as a clear sentence and exit code 2."""


class UserError(Exception):
    """Bad input or an unusable environment: printed as one sentence, exit code 2."""
