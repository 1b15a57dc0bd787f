"""The documentation says what the code does: the README's settings table lists every variable the code reads
with its default, the links lead somewhere, and docs/models.md's programs predict what POST /predict answers."""

import csv
import io
import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from service.client.http import DEFAULT_URL
from service.server.config import Settings
from service.training.artifact import META, WEIGHTS, ModelMeta
from tests.helpers import ROOT, dataset_path, upload

README = ROOT / "README.md"
MODELS_MD = ROOT / "docs" / "models.md"

# The variables that only the client side reads (service/client), with the defaults the README states for them.
CLIENT_DEFAULTS: dict[str, object] = {"MLPS_URL": DEFAULT_URL, "MLPS_API_KEY": None, "MLPS_API_KEY_FILE": None}
ENV_READS = [r"os\.environ\.get\(\s*\"(MLPS_\w+)\"", r"os\.environ\[\s*\"(MLPS_\w+)\"\s*\]",
             r"getenv\(\s*\"(MLPS_\w+)\"", r"envvar=\s*\"(MLPS_\w+)\""]


def section(path: Path, heading: str) -> str:
    """The text under a Markdown heading (given with its #s), up to the next heading of the same or a higher level
    (a line starting with # inside a code block is no heading)."""
    lines = path.read_text().splitlines()
    level = len(heading) - len(heading.lstrip("#"))
    start = lines.index(heading) + 1
    fenced = False
    for end in range(start, len(lines)):
        fenced ^= lines[end].startswith("```")
        if not fenced and re.match(rf"#{{1,{level}}} ", lines[end]):
            break
    else:
        end = len(lines)
    return "\n".join(lines[start:end]) + "\n"


def code_blocks(text: str, lang: str) -> list[str]:
    """The fenced code blocks of one language, in order."""
    return re.findall(rf"^```{lang}\n(.*?)^```$", text, flags=re.M | re.S)


def settings_table() -> dict[str, str | None]:
    """variable → the default the README's settings table states for it (None: none stated)."""
    text = section(README, "## Running it")
    rows = [line for line in text.splitlines() if line.startswith("| `MLPS_")]
    assert rows, "the settings table under 'Running it' is gone"
    table: dict[str, str | None] = {}
    for row in rows:
        names_cell, default_cell, _ = (c.strip() for c in re.split(r"(?<!\\)\|", row.strip().strip("|")))
        names = re.findall(r"`(MLPS_[A-Z0-9_]+)`", names_cell)
        defaults = [re.sub(r"\s*\(.*?\)$", "", d).strip("` ") for d in default_cell.split(", ")]
        assert len(defaults) == len(names), f"one default per variable in the row {row!r}"
        for name, default in zip(names, defaults, strict=True):
            assert name not in table, f"{name} is in the table twice"
            table[name] = None if default == "none" else default
    return table


def parse_default(text: str) -> object:
    """A default as the table writes it: `1 GiB`, `20 000 000`, `0.2`, `empty`, or text."""
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    if text == "empty":
        return ""
    if m := re.fullmatch(r"(\d+(?:\.\d+)?) (KiB|MiB|GiB)", text):
        return int(float(m[1]) * units[m[2]])
    if re.fullmatch(r"\d{1,3}( \d{3})+", text):
        return int(text.replace(" ", ""))
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if re.fullmatch(r"-?\d+\.\d*", text):
        return float(text)
    return text


def env_read_by_the_code() -> set[str]:
    """Every MLPS_ variable that code under service/ reads from the environment itself."""
    found: set[str] = set()
    for path in (ROOT / "service").rglob("*.py"):
        source = path.read_text()
        for pattern in ENV_READS:
            found.update(re.findall(pattern, source))
    return found


def settings_variables() -> dict[str, str]:
    """MLPS_ variable → the Settings field it sets."""
    assert Settings.model_config["env_prefix"] == "MLPS_"
    return {f"MLPS_{name.upper()}": name for name in Settings.model_fields}


def test_settings_table_lists_every_variable_the_code_reads_and_nothing_else():
    table = set(settings_table())
    code = set(settings_variables()) | env_read_by_the_code()
    assert code - table == set(), f"read by the code but missing from the README's settings table: {code - table}"
    assert table - code == set(), f"in the README's settings table but read by no code: {table - code}"
    client_only = env_read_by_the_code() - set(settings_variables())
    assert client_only == set(CLIENT_DEFAULTS), "a client variable changed: update CLIENT_DEFAULTS and the README"


def test_settings_table_states_the_defaults_of_the_code(tmp_path):
    table = settings_table()
    fields = Settings.model_fields
    for variable, name in settings_variables().items():
        stated = table[variable]
        assert stated is not None, f"{variable}: the table states no default"
        if "<data dir>" in stated:
            # A default computed from another setting: the table gives its pattern.
            resolved = Settings(data_dir=tmp_path, database_url="")
            assert getattr(resolved, name) == stated.replace("<data dir>", str(tmp_path.resolve())), \
                f"{variable}: the README says {stated!r}, the code {getattr(resolved, name)!r}"
            continue
        default = fields[name].get_default(call_default_factory=True)
        default = default.get_secret_value() if hasattr(default, "get_secret_value") else default
        default = str(default) if isinstance(default, Path) else default
        assert parse_default(stated) == default, f"{variable}: the README says {stated!r}, the code {default!r}"
    for variable, default in CLIENT_DEFAULTS.items():
        stated = table[variable]
        assert (parse_default(stated) if stated is not None else None) == default, \
            f"{variable}: the README says {stated!r}, the client {default!r}"


def test_relative_links_of_the_docs_lead_to_files():
    for page in [README, *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"
    assert "(docs/models.md)" in section(README, "#### Models (`model.type`)")


# ---------------------------------------------------------------- docs/models.md

PLAIN = "## Plain Python: torch and safetensors only"
PROJECT = "## With the project's own training modules"
# Runs a program as `python PROGRAM MODEL.zip RECORDS.json` would, then writes down the modules it imported.
DRIVER = """import json, runpy, sys
modules_out, program, *args = sys.argv[1:]
sys.argv = [program, *args]
runpy.run_path(program, run_name="__main__")
with open(modules_out, "w") as file:
    json.dump(sorted(sys.modules), file)
"""
# What each program must not import: nothing of the project at all, or nothing of the server side.
FORBIDDEN = {PLAIN: ("service",), PROJECT: ("service.server", "service.client", "sqlalchemy", "fastapi", "httpx")}


def mixed_table() -> bytes:
    """Numbers with gaps, a category with a level seen once and gaps, a boolean; a binary and a numeric target."""
    out = io.StringIO()
    rows = csv.writer(out)
    rows.writerow(["x", "colour", "flag", "label", "amount"])
    for i in range(160):
        x = "" if i % 9 == 0 else f"{(i * 37 % 101) / 10:.1f}"
        colour = "" if i % 13 == 0 else "violet" if i == 5 else ["red", "green", "blue"][i % 3]
        flag = "true" if i % 4 < 2 else "false"
        value = (i * 37 % 101) / 10 + (2.0 if colour == "red" else 0.0) + (1.0 if flag == "true" else 0.0)
        rows.writerow([x, colour, flag, "yes" if value > 6 else "no", f"{3 * value + i % 5:.2f}"])
    return out.getvalue().encode()


def iris_records() -> list[dict[str, Any]]:
    with dataset_path("iris.csv").open() as file:
        records: list[dict[str, Any]] = [{k: float(v) for k, v in row.items() if k != "species"}
                                         for row in csv.DictReader(file)]
    return [*records, {"sepal_length": None, "sepal_width": 3.0, "petal_length": None, "petal_width": 1.0}]


# Gaps, a level seen once in training ("violet"), one never seen ("purple"), and values beyond the training range.
MIXED_RECORDS: list[dict[str, Any]] = [
    {"x": 1.5, "colour": "red", "flag": True}, {"x": None, "colour": None, "flag": None},
    {"x": 9.9, "colour": "violet", "flag": False}, {"x": 4.0, "colour": "purple", "flag": True},
    {"x": 123.0, "colour": "blue", "flag": False}, {"x": -7, "colour": "green", "flag": True}]


@dataclass(frozen=True)
class Case:
    """A model to train and the records to ask it about."""

    file: str
    spec: dict[str, Any]
    records: Callable[[], list[dict[str, Any]]]
    content: Callable[[], bytes] | None = None  # None: the file of ../shared/datasets


MIXED = ["x", "colour", "flag"]
CASES = {
    "iris, the default ensemble": Case("iris.csv", {"target": "species"}, iris_records),
    "iris, a single mlp": Case("iris.csv", {"target": "species", "model": {"type": "mlp"},
                                            "training": {"epochs": 30}}, iris_records),
    "mixed columns, a binary ensemble": Case("mixed.csv", {"target": "label", "features": MIXED},
                                             lambda: MIXED_RECORDS, mixed_table),
    "mixed columns, a regression mlp": Case("mixed.csv", {"target": "amount", "features": MIXED,
                                                          "model": {"type": "mlp"}, "training": {"epochs": 20}},
                                            lambda: MIXED_RECORDS, mixed_table),
}


def program(heading: str) -> str:
    """The first Python block under a heading of docs/models.md: a whole program."""
    blocks = code_blocks(section(MODELS_MD, heading), "python")
    assert blocks, f"docs/models.md has no Python program under {heading!r}"
    return blocks[0]


def test_models_md_describes_the_files_a_download_holds():
    text = MODELS_MD.read_text()
    assert f"`{WEIGHTS}`" in text and f"`{META}`" in text
    for field in ModelMeta.model_fields:
        assert f"`{field}`" in text, f"docs/models.md does not describe model.json's field {field!r}"


@pytest.mark.parametrize("case", list(CASES))
def test_models_md_programs_predict_exactly_what_the_server_answers(client, worker, tmp_path, case):
    model = CASES[case]
    ds = upload(client, model.file, model.content() if model.content else None).json()
    resp = client.post("/jobs", json={"dataset_id": ds["id"], **model.spec})
    assert resp.status_code == 202, resp.text
    assert worker.run_once() == resp.json()["id"]
    job = client.get(f"/jobs/{resp.json()['id']}").json()
    assert job["status"] == "succeeded", job["error"]
    download = client.get(f"/models/{job['model_id']}/download")
    assert download.status_code == 200, download.text
    model_zip = tmp_path / f"{job['model_id']}.zip"
    model_zip.write_bytes(download.content)
    assert sorted(zipfile.ZipFile(model_zip).namelist()) == ["model.json", "weights.safetensors"]
    records = model.records()
    (tmp_path / "records.json").write_text(json.dumps(records))
    answer = client.post("/predict", json={"model_id": job["model_id"], "records": records})
    assert answer.status_code == 200, answer.text
    expected = {"predictions": answer.json()["predictions"], "probabilities": answer.json()["probabilities"]}

    for heading, forbidden in FORBIDDEN.items():
        script = tmp_path / "program.py"
        script.write_text(program(heading))
        modules = tmp_path / "modules.json"
        done = subprocess.run([sys.executable, "-c", DRIVER, str(modules), str(script), str(model_zip),
                               str(tmp_path / "records.json")], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, f"{heading}: {done.stderr}"
        assert json.loads(done.stdout) == expected, f"{heading}: not what POST /predict answers"
        imported = [m for m in json.loads(modules.read_text()) if any(m == f or m.startswith(f + ".")
                                                                      for f in forbidden)]
        assert imported == [], f"{heading}: the program imported {imported}"
