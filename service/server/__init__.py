"""The server side: the HTTP API, the queue, the worker and the job runner, and everything that owns data at rest
(database, storage). Imports service.training and service.schemas; never service.client."""
