"""The client side: the typed HTTP client (`Client`), the `mlps` client commands and their plots. Nothing here
imports server code."""

from service.client.http import (
    DEFAULT_URL,
    ApiError,
    Client,
    ClientError,
    Column,
    Dataset,
    DatasetPreview,
    Embedding,
    EpochMetrics,
    Job,
    JobEvent,
    JobMetrics,
    Model,
    Page,
    Prediction,
    Progress,
    ServerUnreachable,
    Worker,
    WorkerList,
    parse_sse,
)

__all__ = ["DEFAULT_URL", "ApiError", "Client", "ClientError", "Column", "Dataset", "DatasetPreview", "Embedding",
           "EpochMetrics", "Job", "JobEvent", "JobMetrics", "Model", "Page", "Prediction", "Progress",
           "ServerUnreachable", "Worker", "WorkerList", "parse_sse"]
