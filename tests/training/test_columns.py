"""What the service infers from a file: dialects and encodings, column kinds and why, dates and the features they
become, kinds set by the user, and the checks a job's target and features get. Each file is written by the test."""

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from service.training import checks, dates, features, ingest


def ingest_text(tmp_path, text: str, encoding: str = "utf-8", name: str = "f.csv") -> ingest.IngestResult:
    src = tmp_path / name
    src.write_bytes(text.encode(encoding))
    return ingest.ingest(src, tmp_path / (name + ".parquet"), max_columns=10_000)


def by_name(result: ingest.IngestResult) -> dict[str, dict]:
    return {c["name"]: c for c in result.columns}


def codes(result_or_list) -> list[tuple[str, str | None]]:
    found = result_or_list.warnings if isinstance(result_or_list, ingest.IngestResult) else result_or_list
    return [(w["code"], w["column"]) for w in found]


# ---------------------------------------------------------------- dialects and encodings


def test_a_european_csv_reads_its_numbers_dates_and_missing_cells(tmp_path):
    text = ("Datum;Betrag;Menge;Ort\n"
            "01.02.2020;1.234,50;3,5;Köln\n"
            "15.03.2020;12,00;4;Graz\n"
            "20.03.2020;-;1,25;Wien\n"
            "21.03.2020;2.000.000,00;N/A;Köln\n")
    res = ingest_text(tmp_path, text)
    cols = by_name(res)
    assert res.dialect["delimiter"] == ";" and res.dialect["decimal"] == ","
    assert res.dialect["thousands_separator"] == ["."]
    assert cols["Betrag"]["kind"] == "numeric" and cols["Betrag"]["n_missing"] == 1
    assert cols["Betrag"]["stats"]["max"] == 2_000_000.0 and cols["Betrag"]["stats"]["min"] == 12.0
    assert cols["Menge"]["kind"] == "numeric" and cols["Menge"]["n_missing"] == 1
    assert cols["Datum"]["kind"] == "datetime" and cols["Datum"]["datetime_layout"] == "dmy"
    assert cols["Datum"]["stats"]["min"] == "2020-02-01" and cols["Datum"]["stats"]["max"] == "2020-03-21"
    assert cols["Ort"]["kind"] == "categorical"
    stored = pq.read_table(tmp_path / "f.csv.parquet")
    assert stored.column("Betrag").to_pylist() == [1234.5, 12.0, None, 2_000_000.0]


def test_digit_groups_in_a_comma_file_and_a_column_that_only_looked_grouped(tmp_path):
    rows = "\n".join(f'{i},"{1000 + i * 1001:,}",{"1,234" if i < 3 else "n/a x"!r}'.replace("'", '"')
                     for i in range(20))
    res = ingest_text(tmp_path, "id,amount,note\n" + rows + "\n")
    cols = by_name(res)
    assert cols["amount"]["kind"] == "numeric" and cols["amount"]["stats"]["min"] == 1000.0
    # 'note' looked like grouped numbers in the first rows only: it is read as text, nothing lost
    assert cols["note"]["dtype"] == "string"
    assert pq.read_table(tmp_path / "f.csv.parquet").column("note").to_pylist()[:4] == ["1,234"] * 3 + ["n/a x"]


def test_french_spaces_group_digits(tmp_path):
    res = ingest_text(tmp_path, "prix;qte\n1 234,5;2\n12,25;3\n 999 000,0;4\n")
    assert by_name(res)["prix"]["kind"] == "numeric"
    assert pq.read_table(tmp_path / "f.csv.parquet").column("prix").to_pylist() == [1234.5, 12.25, 999000.0]


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_the_delimiter_is_sniffed(tmp_path, delimiter):
    lines = [delimiter.join(["a", "b", "c"])] + [delimiter.join([str(i), f"x{i % 3}", f"{i}.5"]) for i in range(30)]
    res = ingest_text(tmp_path, "\n".join(lines) + "\n")
    assert [c["name"] for c in res.columns] == ["a", "b", "c"]
    assert res.dialect["delimiter"] == delimiter


def test_latin1_and_windows_1252_files_are_decoded_and_say_so(tmp_path):
    text = "name;value\ncafé;1,5\nnaïve;2,5\n€uro;3\n"
    res = ingest_text(tmp_path, text, encoding="cp1252")
    assert res.dialect["encoding"] == "cp1252"
    assert pq.read_table(tmp_path / "f.csv.parquet").column("name").to_pylist() == ["café", "naïve", "€uro"]
    assert ("not_utf8", None) in codes(res)
    assert "Windows-1252" in res.warnings[0]["message"] and "UTF-8" in res.warnings[0]["message"]
    latin = ingest_text(tmp_path, "a,b\n1,\x81\xe9\n", encoding="latin-1", name="g.csv")  # 0x81: no cp1252 meaning
    assert latin.dialect["encoding"] == "latin-1"


def test_utf16_with_a_byte_order_mark_and_a_utf8_bom(tmp_path):
    res = ingest_text(tmp_path, "a,b\n1,été\n2,x\n", encoding="utf-16")
    assert [c["name"] for c in res.columns] == ["a", "b"] and res.dialect["encoding"] == "utf-16"
    assert pq.read_table(tmp_path / "f.csv.parquet").column("b").to_pylist() == ["été", "x"]
    bom = ingest_text(tmp_path, "\ufeffa,b\n1,2\n", name="g.csv")
    assert [c["name"] for c in bom.columns] == ["a", "b"] and not bom.warnings


def test_quoted_line_breaks_before_and_after_the_sniffed_part(tmp_path):
    res = ingest_text(tmp_path, 'a,comment\n1,"line one\nline two"\n2,plain\n')
    assert res.dialect["quoted_newlines"] is True
    assert pq.read_table(tmp_path / "f.csv.parquet").column("comment").to_pylist() == ["line one\nline two", "plain"]
    filler = "".join(f"{i},row {i}\n" for i in range(5000))  # pushes the quoted break past the first 64 KiB
    late = ingest_text(tmp_path, 'a,comment\n' + filler + '9,"first\nsecond"\n10,x\n', name="g.csv")
    assert late.n_rows == 5002
    assert pq.read_table(tmp_path / "g.csv.parquet").column("comment").to_pylist()[-2:] == ["first\nsecond", "x"]


def test_the_missing_value_spellings(tmp_path):
    res = ingest_text(tmp_path, "x,y\n1,a\nNA,b\nN/A,c\nnull,d\n-,e\n?,f\n,g\n8,h\n")
    col = by_name(res)["x"]
    assert col["kind"] == "numeric" and col["n_missing"] == 6
    assert res.dialect["missing_values"] == ingest.NULL_VALUES


def test_numbers_with_a_stray_text_cell_say_so(tmp_path):
    rows = "\n".join(str(i * 1.5) for i in range(40)) + "\n12 (est.)\n"
    res = ingest_text(tmp_path, "reading\n" + rows)
    assert by_name(res)["reading"]["kind"] == "categorical"
    [w] = [w for w in res.warnings if w["code"] == "numbers_as_text"]
    assert w["column"] == "reading" and "'12 (est.)'" in w["message"]


# ---------------------------------------------------------------- kinds


def test_identifiers_free_text_and_their_reasons(tmp_path):
    rows = "\n".join(f"{i},{(i * 7) % 13},user{i:04d},This is free text comment number {i} about it,{i % 3}"
                     for i in range(50))
    res = ingest_text(tmp_path, "PassengerId,x,user,note,row\n" + rows + "\n")
    cols = by_name(res)
    assert cols["PassengerId"]["kind"] == "identifier"
    assert cols["PassengerId"]["reason"] == "identifier: 50 distinct integers in 50 rows, and its name says so"
    assert cols["user"]["kind"] == "identifier" and cols["user"]["reason"] == \
        "identifier: 50 distinct values in 50 rows"
    assert cols["note"]["kind"] == "text" and cols["note"]["reason"].startswith("text: 9.0 words per value")
    assert cols["x"]["kind"] == "numeric" and cols["row"]["kind"] == "numeric"  # 'row' repeats: no row number
    assert codes(res) == [("identifier_column", "PassengerId"), ("identifier_column", "user"),
                          ("text_column", "note")]


def test_row_numbers_are_identifiers_and_small_tables_keep_their_columns(tmp_path):
    rows = "\n".join(f"{i + 1},{i % 4}" for i in range(30))
    assert by_name(ingest_text(tmp_path, "n,v\n" + rows + "\n"))["n"]["kind"] == "identifier"
    few = ingest_text(tmp_path, "city,v\nRome,1\nOslo,2\nLima,3\n", name="g.csv")
    assert by_name(few)["city"]["kind"] == "categorical"  # 3 rows: too few to call unique names identifiers


def test_constant_empty_and_many_level_columns_are_warned_about(tmp_path):
    rows = "\n".join(f"1,,lvl{i % 150},{i}" for i in range(300))
    res = ingest_text(tmp_path, "same,empty,many,x\n" + rows + "\n")
    assert ("constant_column", "same") in codes(res) and ("empty_column", "empty") in codes(res)
    assert ("many_levels", "many") in codes(res)
    table = pq.read_table(tmp_path / "f.csv.parquet")
    params = features.fit_preprocessing(table, ["many"], {"many": "categorical"})
    assert len(params["features"][0]["categories"]) == ingest.MAX_CATEGORY_LEVELS


def test_warnings_of_one_code_are_capped(tmp_path):
    header = ",".join(f"c{i}" for i in range(60))
    row = ",".join("1" for _ in range(60))
    res = ingest_text(tmp_path, f"{header}\n{row}\n{row}\n")
    constant = [w for w in res.warnings if w["code"] == "constant_column"]
    assert len(constant) == ingest.WARNINGS_PER_CODE + 1
    assert constant[-1]["column"] is None and "40 more column(s)" in constant[-1]["message"]


# ---------------------------------------------------------------- dates


@pytest.mark.parametrize(("values", "layout", "first"), [
    (["2012-01-31", "2012-02-29"], "iso", "2012-01-31"),
    (["2012-01-31 10:30", "2012-02-29T23:59:59.5"], "iso", "2012-01-31T10:30:00"),
    (["2012/01/31", "2012/2/9"], "ymd_slash", "2012-01-31"),
    (["31/01/2012", "29/02/2012"], "dmy", "2012-01-31"),
    (["31.01.2012 08:00", "1.2.2012 09:15"], "dmy", "2012-01-31T08:00:00"),
    (["01/31/2012", "02/29/2012"], "mdy", "2012-01-31"),
    (["31 Jan 2012", "29-Feb-2012"], "d_mon_y", "2012-01-31"),
    (["Jan 31, 2012", "February 29, 2012"], "mon_d_y", "2012-01-31"),
])
def test_date_layouts(values, layout, first):
    found = dates.detect(pa.chunked_array([pa.array(values)]))
    assert found is not None and found.layout == layout and not found.ambiguous
    seconds = dates.parse(pa.array(values), layout)
    assert str(np.datetime64(int(seconds[0]), "s")).removesuffix("T00:00:00") == first


def test_zones_convert_to_utc_and_ambiguous_dates_read_month_first():
    seconds = dates.parse(pa.array(["2012-01-31T10:00:00Z", "2012-01-31T10:00:00+02:00", "2012-01-31 10:00"]), "iso")
    assert [str(np.datetime64(int(s), "s")) for s in seconds] == ["2012-01-31T10:00:00", "2012-01-31T08:00:00",
                                                                   "2012-01-31T10:00:00"]
    found = dates.detect(pa.chunked_array([pa.array(["01/02/2012", "03/04/2012"])]))
    assert found.layout == "mdy" and found.ambiguous


def test_not_dates():
    for values in (["abc", "def"], ["12", "13"], ["2012-13-45", "2012-14-01"], ["1.5", "2.5"]):
        assert dates.detect(pa.chunked_array([pa.array(values)])) is None


def test_date_columns_in_csv_and_parquet_and_the_ambiguous_warning(tmp_path):
    res = ingest_text(tmp_path, "d,v\n01/02/2012,1\n03/04/2012,2\n05/06/2012,3\n")
    assert by_name(res)["d"]["kind"] == "datetime" and ("ambiguous_dates", "d") in codes(res)
    table = pa.table({"day": pa.array([dt.date(2020, 1, 1), dt.date(2020, 6, 30)]),
                      "at": pa.array([dt.datetime(2020, 1, 1, 12, tzinfo=dt.UTC), dt.datetime(2020, 1, 2, 13,
                                                                                            tzinfo=dt.UTC)],
                                     pa.timestamp("us", tz="Europe/Paris")),
                      "v": [1, 2]})
    pq.write_table(table, tmp_path / "t.parquet")
    res = ingest.ingest(tmp_path / "t.parquet", tmp_path / "out.parquet", max_columns=10)
    cols = by_name(res)
    assert cols["day"]["kind"] == "datetime" and cols["at"]["kind"] == "datetime"
    assert cols["at"]["stats"]["min"] == "2020-01-01T12:00:00"  # stored with its zone; read as UTC


def test_a_few_unreadable_dates_become_missing_and_are_counted(tmp_path):
    rows = "\n".join(f"2020-01-{1 + i % 28:02d},{i}" for i in range(99)) + "\nnot a date,5\n"
    res = ingest_text(tmp_path, "d,v\n" + rows)
    col = by_name(res)["d"]
    assert col["kind"] == "datetime" and col["stats"]["n_unparsed"] == 1
    assert col["reason"] == "datetime: 99 of 100 values read as YYYY-MM-DD"
    assert ("unparsed_dates", "d") in codes(res)


def test_a_date_feature_becomes_calendar_inputs_fitted_on_training_rows():
    days = [f"2021-{m:02d}-{d:02d}" for m in range(1, 13) for d in (1, 15)]
    table = pa.table({"d": days + [None]})
    params = features.fit_preprocessing(table, ["d"], {"d": "datetime"}, features.Encoding(missing_indicators=True),
                                        {"d": "iso"})
    item = params["features"][0]
    parts = {p for p, _ in item["inputs"]}
    # one year (no year), no times (no hour), two weeks apart (a weekday would be noise)
    assert parts == {"elapsed", "month", "day", "yearday"}
    assert ["month", "sin"] in item["inputs"] and ["month", "cos"] in item["inputs"]
    assert params["n_inputs"] == len(item["inputs"]) + 1  # + the missing indicator
    X = features.transform(table, params)
    assert X.shape == (25, params["n_inputs"]) and np.isfinite(X).all()
    assert np.allclose(X[:, :-1].mean(axis=0), 0, atol=1e-5)  # standardised on the rows it was fitted on
    assert X[24, -1] == 1.0 and X[:24, -1].sum() == 0
    month = item["inputs"].index(["month", "value"])
    assert X[0, month] < X[23, month]  # January below December
    unseen = features.transform(pa.table({"d": ["2030-07-04"]}), params)  # a later date: elapsed beyond training
    assert unseen[0, item["inputs"].index(["elapsed", "value"])] > X[:24, 0].max()


def test_the_calendar_parts_follow_the_dates_spacing():
    def parts(values):
        return dates.parts_for(dates.parse(pa.array(values), "iso"))

    daily = [str(np.datetime64("2020-01-01") + i) for i in range(400)]
    assert parts(daily) == ["elapsed", "year", "month", "day", "weekday", "yearday"]
    assert parts([f"{y}-{m:02d}-01" for y in range(1990, 2000) for m in (1, 4, 7, 10)]) == ["elapsed", "year", "month"]
    assert parts([f"{y}-01-01" for y in range(1950, 2000)]) == ["elapsed", "year"]
    assert "hour" in parts([f"2020-01-01 {h:02d}:00" for h in range(24)])


def test_predict_records_with_dates_and_a_bad_date_names_record_and_column():
    schema = [{"name": "d", "kind": "datetime", "layout": "dmy"}, {"name": "x", "kind": "numeric"}]
    table = features.records_to_table([{"d": "31/01/2012", "x": 1}, {"d": None, "x": 2}, {"d": "2012-01-31", "x": 3}],
                                      schema)
    assert table.column("d").to_pylist() == ["31/01/2012", None, "2012-01-31"]  # ISO 8601 is read in any layout
    seconds = dates.parse(table.column("d"), "dmy")
    assert seconds[0] == seconds[2] and np.isnan(seconds[1])
    with pytest.raises(features.RecordsError) as err:
        features.records_to_table([{"d": "31/01/2012", "x": 1}, {"d": "31-31-2012", "x": 2}, {"d": 5, "x": 3}],
                                  schema)
    text = str(err.value)
    assert ("record 1: column 'd' expects a date like '31/01/2012' (DD/MM/YYYY (or DD.MM.YYYY, DD-MM-YYYY)), "
            "got '31-31-2012'") in text
    assert "record 2: column 'd' expects a date as text" in text and err.value.column == "d"


# ---------------------------------------------------------------- kinds set by the user


def summary_of(values, name="c"):
    return ingest.summarise_column(name, pa.chunked_array([pa.array(values)]))


def test_setting_kinds_and_what_each_column_can_take():
    ids = summary_of([f"u{i}" for i in range(30)])
    assert ids["kind"] == "identifier"
    cat = checks.set_kind(ids, "categorical", None)
    assert cat["kind"] == "categorical" and cat["inferred_kind"] == "identifier"
    assert cat["reason"] == "categorical: set by the user (inferred: identifier)"
    back = checks.set_kind(cat, "identifier", None)
    assert back["kind"] == "identifier" and "inferred_kind" not in back and back["reason"] == ids["reason"]
    with pytest.raises(ingest.DataError, match="holds text, not numbers"):
        checks.set_kind(ids, "numeric", None)
    nums = summary_of([0, 1, 1, 0])
    assert checks.set_kind(nums, "boolean", None)["kind"] == "boolean"
    assert checks.set_kind(nums, "categorical", None)["kind"] == "categorical"
    with pytest.raises(ingest.DataError, match="cannot be boolean"):
        checks.set_kind(summary_of([0, 1, 2]), "boolean", None)
    with pytest.raises(ingest.DataError, match="holds numbers, not dates"):
        checks.set_kind(nums, "datetime", None)
    text = pa.chunked_array([pa.array(["soon", "later"])])
    with pytest.raises(ingest.DataError, match="not dates such as 'soon'; .* YYYY-MM-DD"):
        checks.set_kind(summary_of(["soon", "later"]), "datetime", text)
    with pytest.raises(ingest.DataError, match="not a column kind"):
        checks.set_kind(nums, "tensor", None)


# ---------------------------------------------------------------- checks at submit


def test_columns_left_out_of_a_job():
    cols = [{"name": "id", "kind": "identifier", "reason": "identifier: 9 distinct values in 9 rows",
             "n_missing": 0, "n_unique": 9},
            {"name": "same", "kind": "numeric", "n_missing": 0, "n_unique": 1},
            {"name": "none", "kind": "numeric", "n_missing": 9, "n_unique": 0},
            {"name": "x", "kind": "numeric", "n_missing": 0, "n_unique": 5}]
    kept, found = checks.left_out(cols, ["id", "same", "none", "x"], 9, listed=False)
    assert kept == ["x"] and codes(found) == [("column_left_out", c) for c in ("id", "same", "none")]
    kept, found = checks.left_out(cols, ["id", "same", "x"], 9, listed=True)
    assert kept == ["id", "x"] and codes(found) == [("column_left_out", "same")]


def test_target_checks():
    y = pa.chunked_array([pa.array(["a"] * 40 + ["b"] * 40 + ["c"] + [None] * 3)])
    found = checks.target_checks(y, "y", "classification", holdout=0.2)
    assert codes(found) == [("missing_target", "y"), ("rare_class", "y")]
    assert found[0]["message"].startswith("3 of 84 rows have no value in 'y'")
    assert "class 'c' of 'y' has 1 row(s); a class needs at least 3" in found[1]["message"]
    with pytest.raises(ingest.DataError, match="every row is its own class"):
        checks.target_checks(pa.chunked_array([pa.array([f"n{i}" for i in range(20)])]), "y", "classification",
                             holdout=0.2)
    with pytest.raises(ingest.DataError, match=r"fractional numbers \(such as 2.5\)"):
        checks.target_checks(pa.chunked_array([pa.array([1.0, 2.5, 3.0])]), "y", "classification", holdout=0.2)
    few = checks.target_checks(pa.chunked_array([pa.array([1, 2, 3] * 20)]), "y", "regression", holdout=0.2)
    assert codes(few) == [("target_looks_categorical", "y")] and "(1, 2, 3)" in few[0]["message"]
    many = checks.target_checks(pa.chunked_array([pa.array(list(range(60)) * 2)]), "y", "classification",
                                holdout=0.2)
    assert ("target_looks_continuous", "y") in codes(many)


def test_leaking_features_are_found_and_honest_ones_are_not():
    rng = np.random.default_rng(0)
    n = 200
    label = rng.choice(["yes", "no"], n)
    temp_c = rng.normal(20, 5, n)
    table = pa.table({"label": label, "code": np.where(label == "yes", 1, 0), "copy": label,
                      "noise": rng.normal(size=n), "group": rng.choice(["a", "b"], n),
                      "temp_c": temp_c, "temp_f": temp_c * 9 / 5 + 32, "temp_log": np.log(temp_c - temp_c.min() + 1),
                      "x": temp_c + rng.normal(0, 3, n)})
    found = checks.leaks(table, "label", ["code", "copy", "noise", "group"], "classification")
    assert codes(found) == [("target_leak", "code"), ("target_leak", "copy")]
    found = checks.leaks(table, "temp_c", ["temp_f", "temp_log", "x", "noise"], "regression")
    assert codes(found) == [("target_leak", "temp_f"), ("target_leak", "temp_log")]
    assert "correlation 1.0000" in found[0]["message"]
    assert not checks.leaks(table.slice(0, 10), "label", ["code"], "classification")  # too few rows to tell


def test_rows_needed_to_hold_a_class_out():
    for fraction in (0.2, 0.1, 0.25, 0.5, 0.125, 1 / 3):
        n = checks._rows_to_hold_out(fraction)
        held = features.split_rows(n, fraction, 0, strata=np.zeros(n)).validation
        fewer = features.split_rows(n - 1, fraction, 0, strata=np.zeros(n - 1)).validation
        assert len(held) >= 1 and len(fewer) == 0, fraction
    assert checks._rows_to_hold_out(0.0) == 1
