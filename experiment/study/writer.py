"""`cuedpain study`: read the dataset root, write the page and its tables (the imperative shell).

Writes into `out` (default `<root>/derivatives/cuedpain-study/`, which the BIDS validator
leaves alone): `study.html`, one `<table>.tsv` per table (n/a for missing, fixed decimals)
with a `<table>.json` describing its columns, and, in the default place, the derivative
dataset's `dataset_description.json`. Every file is written atomically; nothing outside
`out` is written. The dataset itself is only read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from experiment import __version__
from experiment.outputs.atomic import OwnedPaths, create_once, write_text
from experiment.outputs.tables import tsv_text
from experiment.study import figures
from experiment.study.aggregate import StudyTable, StudyTables, study_tables
from experiment.outputs.jsonio import JsonObject, dumps
from experiment.study.model import Study
from experiment.study.page import render_page
from experiment.study.plans import PlanReader, no_plans
from experiment.study.reader import read_study

PAGE_NAME = "study.html"
DEFAULT_OUT = Path("derivatives") / "cuedpain-study"


@dataclass(frozen=True)
class StudyOutputs:
    study: Study
    tables: StudyTables
    page: Path
    files: tuple[Path, ...]


def table_tsv(table: StudyTable) -> str:
    """A table as BIDS-style TSV: header line, n/a for missing, the column's decimals for floats."""
    return tsv_text(table.names, table.rows, decimals={c.name: c.decimals for c in table.columns})


def table_sidecar(table: StudyTable) -> JsonObject:
    return {c.name: {"Description": c.description} for c in table.columns}


def default_out(root: Path) -> Path:
    return Path(root) / DEFAULT_OUT


def write_study(root: Path, out: Path | None = None, *, plan_reader: PlanReader = no_plans) -> StudyOutputs:
    """Read `root`, write the page and the tables into `out`; returns what was written."""
    root = Path(root)
    study = read_study(root, plan_reader=plan_reader)
    out = Path(out) if out is not None else default_out(root)
    tables = study_tables(study)
    owned = OwnedPaths.of(dirs=(out,))
    written: list[Path] = []
    for t in tables.all():
        written.append(write_text(out / f"{t.name}.tsv", table_tsv(t), owned=owned))
        written.append(write_text(out / f"{t.name}.json", dumps(table_sidecar(t)), owned=owned))
    if out.resolve() == default_out(root).resolve():
        create_once(out / "dataset_description.json", dumps({
            "Name": "cuedpain study tables", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "cuedpain", "Version": __version__,
                             "Description": "cuedpain study: runs, QC flags, calibrations and ratings by group"}]})
            .encode("utf-8"))
    plots = {"calibration": figures.calibration_figure(study), "ratings": figures.ratings_figure(study),
             "inflation": figures.inflation_figure(study), "timing": figures.timing_figure(study)}
    names = [p.name for p in written if p.suffix == ".tsv"]
    page = write_text(out / PAGE_NAME, render_page(study, tables, plots, names), owned=owned)
    return StudyOutputs(study=study, tables=tables, page=page, files=(page, *written))
