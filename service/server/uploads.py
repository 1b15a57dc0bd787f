"""Stream a multipart upload straight to a file on disk, in chunks, enforcing the size limit as it goes."""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from service.server.errors import InvalidInput, PayloadTooLarge, UnsupportedMedia

FILE_FIELD = "file"
MAX_TEXT_FIELD = 1024


def multipart_body(file_description: str, example: dict[str, str],
                   extra: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """OpenAPI `requestBody` for an endpoint that streams a multipart part named 'file' (plus small text parts)."""
    properties = {FILE_FIELD: {"type": "string", "format": "binary", "description": file_description}, **(extra or {})}
    schema = {"type": "object", "required": [FILE_FIELD], "properties": properties}
    return {"requestBody": {"required": True,
                            "content": {"multipart/form-data": {"schema": schema, "example": example}}}}


@dataclass
class _Parts:
    """What the parser's callbacks have seen so far: the current part's headers and name, a text part's value."""

    headers: dict[str, bytes] = field(default_factory=dict)
    header: bytes = b""
    value: bytes = b""
    name: str | None = None
    text: bytes = b""
    done: bool = False
    seen_file: bool = False


@dataclass
class Upload:
    filename: str | None = None
    size: int = 0
    sha256: str = ""
    fields: dict[str, str] = field(default_factory=dict)


async def receive_file(request: Request, dest: Path, *, max_bytes: int) -> Upload:
    """Write the `file` part of a multipart/form-data body to `dest`; small text parts go to `fields`."""
    mime, params = parse_options_header(request.headers.get("content-type", ""))
    if mime != b"multipart/form-data" or b"boundary" not in params:
        raise UnsupportedMedia(
            "send the data set as multipart/form-data with a part named 'file' (curl -F file=@data.csv ...)",
            errors=[{"field": FILE_FIELD, "message": "expected a multipart/form-data upload"}],
        )
    upload = Upload()
    hasher = hashlib.sha256()
    state = _Parts()
    out = open(dest, "wb")  # noqa: SIM115 (closed in finally; written by parser callbacks)

    def on_part_begin() -> None:
        state.headers, state.header, state.value, state.name, state.text = {}, b"", b"", None, b""

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state.header += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state.value += data[start:end]

    def on_header_end() -> None:
        state.headers[state.header.decode("latin-1").lower()] = state.value
        state.header, state.value = b"", b""

    def on_headers_finished() -> None:
        _, disp = parse_options_header(state.headers.get("content-disposition", b""))
        state.name = disp.get(b"name", b"").decode("utf-8", "replace")
        if state.name == FILE_FIELD:
            if state.seen_file:
                raise InvalidInput("send one file per upload",
                                   errors=[{"field": FILE_FIELD, "message": "more than one file part"}])
            state.seen_file = True
            raw = disp.get(b"filename")
            upload.filename = raw.decode("utf-8", "replace") if raw is not None else None

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if state.name == FILE_FIELD:
            upload.size += len(chunk)
            if upload.size > max_bytes:
                raise PayloadTooLarge(
                    f"the file is larger than the upload limit of {max_bytes} bytes",
                    errors=[{"field": FILE_FIELD, "message": f"at most {max_bytes} bytes"}],
                )
            hasher.update(chunk)
            out.write(chunk)
        elif len(state.text) + len(chunk) <= MAX_TEXT_FIELD:
            state.text += chunk

    def on_part_end() -> None:
        if state.name and state.name != FILE_FIELD:
            upload.fields[state.name] = state.text.decode("utf-8", "replace")

    def on_end() -> None:
        state.done = True

    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data, "on_part_end": on_part_end, "on_end": on_end,
    })
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except ClientDisconnect:
        raise InvalidInput("the upload was cut off before it finished; send it again",
                           errors=[{"field": FILE_FIELD, "message": "incomplete multipart body"}]) from None
    except (InvalidInput, PayloadTooLarge):
        raise
    except OSError:  # writing to our own disk failed (e.g. full): a server fault, not a malformed body
        raise
    except Exception as exc:  # the multipart parser's own errors, e.g. a header line over its 4 KiB limit
        raise InvalidInput(f"the multipart body could not be read: {exc}; send it as `curl -F file=@data.csv` "
                           "does, with each part header (the file name included) under 4 KiB",
                           errors=[{"field": FILE_FIELD, "message": f"malformed multipart body: {exc}"}]) from None
    finally:
        out.close()
    if not state.done:
        raise InvalidInput("the upload was cut off before its end; send it again",
                           errors=[{"field": FILE_FIELD, "message": "incomplete multipart body"}])
    if not state.seen_file:
        raise InvalidInput("no file in the upload; send it in a part named 'file' (curl -F file=@data.csv ...)",
                           errors=[{"field": FILE_FIELD, "message": "field required"}])
    upload.sha256 = hasher.hexdigest()
    return upload
