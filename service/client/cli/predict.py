"""`mlps predict`: predictions for the records of a JSON file, or for every row of a CSV/Parquet file (scored on
the server in batches)."""

import csv
import io
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from service.client.cli.common import UrlOpt, connect, console

TABLE_SUFFIXES = {".csv", ".tsv", ".txt", ".parquet", ".pq"}


def _read_json_input(path: Path) -> dict[str, Any]:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"{path} is not valid JSON: {exc}", param_hint="--input") from None
    if isinstance(body, list):
        return {"records": body}
    if isinstance(body, dict) and ({"records", "inputs"} & set(body)):
        return {k: body[k] for k in ("records", "inputs") if k in body}
    raise typer.BadParameter(f"{path} must hold a list of records, or an object with 'records' or 'inputs'",
                             param_hint="--input")


def _prediction_rows(answer: dict[str, Any], records: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Rows for CSV output: each record's columns, then prediction(s) and p_<label> per class."""
    rows = []
    probabilities = answer.get("probabilities") or [None] * len(answer["predictions"])
    spreads = answer.get("uncertainty") or [None] * len(answer["predictions"])
    for i, (prediction, probs, spread) in enumerate(zip(answer["predictions"], probabilities, spreads,
                                                         strict=True)):
        row = dict(records[i]) if records else {}
        if isinstance(prediction, dict):
            row.update({f"prediction_{k}": v for k, v in prediction.items()})
        else:
            row["prediction"] = prediction
        if probs:
            row.update({f"p_{label}": p for label, p in probs.items()})
        for key, value in (spread or {}).items():
            if isinstance(value, dict):  # one standard deviation per regression target
                row.update({f"{key}_{name}": v for name, v in value.items()})
            else:
                row[key] = value
        rows.append(row)
    return rows


def _write_csv(rows: list[dict[str, Any]], out: IO[str]) -> None:
    names: list[str] = []
    for row in rows:
        names += [k for k in row if k not in names]
    writer = csv.DictWriter(out, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})


def _csv_to_answer(model_id: str, data: bytes) -> dict[str, Any]:
    """The /predict answer's shape from a scored CSV: predictions and, for classifiers, probabilities."""
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(io.BytesIO(data))
    names = table.column_names
    probability_names = [n for n in names if n.startswith("p_")]
    prediction_names = [n for n in names if n == "prediction" or n.startswith("prediction_")]
    if prediction_names == ["prediction"]:
        predictions = table.column("prediction").to_pylist()
    else:
        columns = {n.removeprefix("prediction_"): table.column(n).to_pylist() for n in prediction_names}
        predictions = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    probabilities = None
    if probability_names:
        columns = {n.removeprefix("p_"): table.column(n).to_pylist() for n in probability_names}
        probabilities = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    return {"model_id": model_id, "predictions": predictions, "probabilities": probabilities}


@contextmanager
def _text_output(output: Path | None) -> Iterator[IO[str]]:
    """The --output file (opened for text), or standard output."""
    if output is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    with output.open("w", encoding="utf-8", newline="") as fh:
        yield fh


def predict(
    model_id: Annotated[str, typer.Argument(help="Model id (mdl_...)")],
    input_file: Annotated[Path, typer.Option("--input", "-i", exists=True, dir_okay=False, readable=True,
                                             help=".json (a list of records, or {\"inputs\": [...]}) or .csv/.tsv/"
                                                  ".parquet (scored on the server in batches)")],
    output: Annotated[Path | None, typer.Option("--output", "-o", dir_okay=False,
                                                help="File to write [default: standard output]")] = None,
    output_format: Annotated[str | None, typer.Option(
        "--format", help="json or csv [default: json for .json input, csv for a table]")] = None,
    uncertainty: Annotated[bool, typer.Option("--uncertainty", help="Ensembles, JSON input: also the members' "
                                                                    "spread per record")] = False,
    url: UrlOpt = None,
) -> None:
    """Predict with a trained model for the records in a JSON file or every row of a CSV/Parquet file."""
    if uncertainty and input_file.suffix.lower() != ".json":
        raise typer.BadParameter("--uncertainty works with a .json input (records)", param_hint="--uncertainty")
    is_table = input_file.suffix.lower() in TABLE_SUFFIXES
    fmt = (output_format or ("csv" if is_table else "json")).lower()
    if fmt not in ("json", "csv"):
        raise typer.BadParameter(f"{output_format!r}: use json or csv", param_hint="--format")
    if not is_table and input_file.suffix.lower() != ".json":
        raise typer.BadParameter(f"{input_file.name}: give a .json, .csv, .tsv or .parquet file", param_hint="--input")
    with connect(url) as client:
        if is_table and fmt == "csv":
            rows = client.predict_csv(model_id, input_file, output if output is not None else sys.stdout.buffer)
            if output is not None:
                console(stderr=True).print(f"wrote {rows} predictions to {output}")
                return
        elif is_table:
            buffer = io.BytesIO()
            client.predict_csv(model_id, input_file, buffer)
            answer = _csv_to_answer(model_id, buffer.getvalue())
            with _text_output(output) as out:
                out.write(json.dumps(answer, indent=2, ensure_ascii=False) + "\n")
        else:
            body = _read_json_input(input_file)
            prediction = client.predict(model_id, records=body.get("records"), inputs=body.get("inputs"),
                                        uncertainty=uncertainty)
            with _text_output(output) as out:
                if fmt == "json":
                    out.write(json.dumps(prediction, indent=2, ensure_ascii=False) + "\n")
                else:
                    _write_csv(_prediction_rows(dict(prediction), body.get("records")), out)
    if output is not None:
        console(stderr=True).print(f"wrote {output}")
