"""The one exception type that handlers turn into a JSON error answer."""


class ApiError(Exception):
    """An error with the HTTP status and the one-sentence message sent to the client.

    ``close``: close the connection after the answer (the request was not read whole).
    """

    def __init__(self, status: int, message: str, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close
