"""The one exception type that handlers turn into a JSON error answer."""


class ApiError(Exception):
    """An error with the HTTP status and the one-sentence message sent to the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
