"""Tabular behaviour features (e.g. for the policy push): impute missing values (scikit-learn SimpleImputer),
encode categorical columns and the label with a saved, reusable mapping (OrdinalEncoder), and add derived
features declared in a YAML spec (sum, difference, product or ratio of two columns), never arbitrary code.

    spec = load_spec("features.yaml")
    table, mapping = fit_features(rows, spec)     # learn imputation values and category codes
    table = apply_features(new_rows, mapping)     # reuse them on new data (unknown category -> -1)

Spec keys: numeric (list), categorical (list), label (column, optional), impute.numeric (mean|median|
most_frequent), impute.categorical (most_frequent|constant), keep (columns copied unchanged), derived (list of {name, op, a, b}).
A ratio whose denominator is 0 is written as 0 and counted in the mapping's `zero_denominators`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sftlab.errors import SftlabError
from sftlab.io import read_yaml_mapping

MISSING = "__missing__"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DerivedFeature(_Strict):
    name: str
    op: Literal["sum", "difference", "product", "ratio"]
    a: str
    b: str


class ImputeSpec(_Strict):
    numeric: Literal["mean", "median", "most_frequent"] = "median"
    categorical: Literal["most_frequent", "constant"] = "most_frequent"


class FeatureSpec(_Strict):
    """What to do with which columns (see the module docstring)."""

    numeric: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)
    label: str | None = None
    keep: list[str] = Field(default_factory=list, description="columns copied unchanged (e.g. an id)")
    impute: ImputeSpec = Field(default_factory=ImputeSpec)
    derived: list[DerivedFeature] = Field(default_factory=list)


def load_spec(path: str | Path) -> FeatureSpec:
    """Read and validate a feature spec YAML file (unknown keys and ops are errors naming the key)."""
    path = Path(path)
    if not path.is_file():
        raise SftlabError(f"feature spec not found: {path}")
    raw = read_yaml_mapping(path, "a feature spec (a mapping: numeric, categorical, label, ...)")
    try:
        return FeatureSpec.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise SftlabError(f"{path}: {key}: {first['msg']}") from None


def load_mapping(path: str | Path) -> dict:
    """A mapping saved by `fit_features` (`OUT.mapping.json`), checked enough that applying it cannot fail on its
    shape: a one-line error naming the file when it is missing, not JSON, or not such a mapping."""
    from sftlab.io import read_json

    path = Path(path)
    if not path.is_file():
        raise SftlabError(f"mapping file not found: {path}")
    mapping = read_json(path)
    missing = [key for key in ("spec", "impute", "categories", "missing_counts")
               if not isinstance(mapping, dict) or not isinstance(mapping.get(key), dict)]
    if missing:
        raise SftlabError(f"{path}: not a saved feature mapping (no {', '.join(missing)}); write one with --spec")
    try:
        spec = FeatureSpec.model_validate(mapping["spec"])
    except ValidationError as exc:
        first = exc.errors()[0]
        raise SftlabError(f"{path}: spec.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    lacking = [c for c in spec.numeric + spec.categorical if c not in mapping["impute"]]
    lacking += [c for c in spec.categorical + ([spec.label] if spec.label else []) if c not in mapping["categories"]]
    if lacking:
        raise SftlabError(f"{path}: not a saved feature mapping (no imputation value or categories for {lacking})")
    return mapping


def _check_columns(rows: list[dict], spec_columns: list[str]) -> None:
    present = set(rows[0]) - {"_src"}
    for column in spec_columns:
        if column not in present:
            raise SftlabError(f"{rows[0].get('_src', 'row')}: column {column!r} not found; the file has {sorted(present)}")


def _numeric_matrix(rows: list[dict], columns: list[str]) -> np.ndarray:
    matrix = np.full((len(rows), len(columns)), np.nan)
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            value = row.get(column)
            if value is None or (isinstance(value, str) and not value.strip()):
                continue
            try:
                matrix[i, j] = float(value)
            except (TypeError, ValueError):
                raise SftlabError(f"{row.get('_src', 'row')}: column {column!r} should be a number, got {value!r}") from None
    return matrix


def _category_values(rows: list[dict], column: str) -> list[str]:
    return [MISSING if row.get(column) in (None, "") else str(row[column]) for row in rows]


def fit_features(rows: list[dict], spec: FeatureSpec) -> tuple[list[dict], dict]:
    """Learn imputation values and category codes from `rows`; returns (feature rows, reusable mapping)."""
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OrdinalEncoder

    _check_columns(rows, spec.numeric + spec.categorical + ([spec.label] if spec.label else []))
    mapping: dict = {"spec": spec.model_dump(), "impute": {}, "categories": {}, "missing_counts": {}}
    if spec.numeric:
        matrix = _numeric_matrix(rows, spec.numeric)
        imputer = SimpleImputer(strategy=spec.impute.numeric, keep_empty_features=True).fit(matrix)
        mapping["impute"].update({c: float(v) for c, v in zip(spec.numeric, imputer.statistics_)})
        mapping["missing_counts"].update({c: int(n) for c, n in zip(spec.numeric, np.isnan(matrix).sum(axis=0))})
    for column in spec.categorical + ([spec.label] if spec.label else []):
        values = _category_values(rows, column)
        mapping["missing_counts"][column] = values.count(MISSING)
        observed = [v for v in values if v != MISSING]
        if column != spec.label:
            if spec.impute.categorical == "most_frequent" and observed:
                fill = SimpleImputer(strategy="most_frequent").fit(np.array(observed, dtype=object).reshape(-1, 1))
                mapping["impute"][column] = str(fill.statistics_[0])
            else:
                mapping["impute"][column] = MISSING
            observed = [mapping["impute"][column] if v == MISSING else v for v in values]
        elif len(observed) < len(values):
            first = next(row for row in rows if row.get(column) in (None, ""))
            raise SftlabError(f"{first.get('_src', 'row')}: label column {column!r} is empty")
        encoder = OrdinalEncoder().fit(np.array(observed, dtype=object).reshape(-1, 1))
        mapping["categories"][column] = [str(c) for c in encoder.categories_[0]]
    return apply_features(rows, mapping), mapping


def apply_features(rows: list[dict], mapping: dict) -> list[dict]:
    """Feature rows from a saved mapping: imputed numbers, category codes (-1 when unseen), derived features.

    The label column is encoded when the rows have it and left out when they do not (data to predict on).
    """
    spec = FeatureSpec.model_validate(mapping["spec"])
    _check_columns(rows, spec.keep + spec.numeric + spec.categorical)
    codes = {column: {name: i for i, name in enumerate(names)} for column, names in mapping["categories"].items()}
    matrix = _numeric_matrix(rows, spec.numeric) if spec.numeric else np.zeros((len(rows), 0))
    zero_denominators = 0
    out = []
    for i, row in enumerate(rows):
        record = {"_src": row.get("_src", "row"), **{column: row.get(column) for column in spec.keep}}
        for j, column in enumerate(spec.numeric):
            value = matrix[i, j]
            record[column] = mapping["impute"][column] if math.isnan(value) else float(value)
        for column in spec.categorical:
            value = row.get(column)
            value = mapping["impute"][column] if value in (None, "") else str(value)
            record[column] = codes[column].get(value, -1)
        for feature in spec.derived:
            value, undefined = _derive(feature, record)
            record[feature.name] = value
            zero_denominators += undefined
        if spec.label and spec.label in row:
            label = str(row.get(spec.label, ""))
            if label not in codes[spec.label]:
                raise SftlabError(f"{record['_src']}: label {label!r} is not in the saved mapping {mapping['categories'][spec.label]}")
            record[spec.label] = codes[spec.label][label]
        out.append(record)
    mapping["zero_denominators"] = zero_denominators
    return out


def _derive(feature: DerivedFeature, record: dict) -> tuple[float, int]:
    for column in (feature.a, feature.b):
        if column not in record:
            raise SftlabError(f"derived feature {feature.name!r}: column {column!r} is not a numeric, categorical or earlier derived feature")
    a, b = float(record[feature.a]), float(record[feature.b])
    if feature.op == "sum":
        return a + b, 0
    if feature.op == "difference":
        return a - b, 0
    if feature.op == "product":
        return a * b, 0
    return (a / b, 0) if b != 0 else (0.0, 1)


def feature_table_csv(records: list[dict]) -> str:
    """The feature rows as CSV text (columns in record order, `_src` left out)."""
    import csv
    import io

    fields = [key for key in records[0] if key != "_src"] if records else []
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()
