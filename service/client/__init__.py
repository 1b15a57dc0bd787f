"""The client side: the typed HTTP client (`Client`), the `mlps` client commands and their plots. Nothing here
imports server code."""

from service.client.http import (
    DEFAULT_URL,
    ApiError,
    Client,
    ClientError,
    JobEvent,
    ServerUnreachable,
    parse_sse,
)

__all__ = ["DEFAULT_URL", "ApiError", "Client", "ClientError", "JobEvent", "ServerUnreachable", "parse_sse"]
