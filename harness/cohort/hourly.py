"""SQL that bins the EHR events of each stay's window into the 48-hour long-format series.

Hour h of a stay holds events with ``intime + h <= charttime < intime + h + 1`` (and before the
prediction time). Numeric variables: unit conversion, then the plausibility range (values outside
are dropped and counted), then the hourly mean; urine output: the hourly sum of output volumes
minus irrigant volumes; heart rhythm: a one-hot of the hour's last recorded rhythm.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from harness.cohort.spec import VariableSpec

#: Per-itemid roles in the item map.
VALUE, SUBTRACT = "value", "subtract"


def _q(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def item_map(variables: list[VariableSpec]) -> pd.DataFrame:
    """One row per (itemid, variable): source, role, conversion and plausibility range."""
    rows: list[dict[str, Any]] = []
    for v in variables:
        lo, hi = v.range if v.range else (None, None)
        for role, items in ((VALUE, v.itemids), (SUBTRACT, v.subtract_itemids)):
            for item in items:
                rows.append(
                    {
                        "itemid": item,
                        "variable": v.name,
                        "source": v.source,
                        "role": role,
                        "aggregate": v.aggregate,
                        "conv": v.convert.get(item, ""),
                        "lo": lo,
                        "hi": hi,
                    }
                )
    return pd.DataFrame(rows).astype({"itemid": "int32", "lo": "float64", "hi": "float64"})


_CONVERTED = """CASE m.conv
        WHEN 'fahrenheit_to_celsius' THEN (e.valuenum - 32) * 5.0 / 9.0
        WHEN 'fraction_to_percent' THEN CASE WHEN e.valuenum <= 1 THEN e.valuenum * 100
                                             ELSE e.valuenum END
        ELSE e.valuenum END"""
_HOUR = "CAST(floor(epoch(e.charttime - w.intime) / 3600) AS SMALLINT)"


def numeric_sql(source: str) -> str:
    """Hourly mean of range-checked values from chartevents or labevents.

    Yields ``stay_id, hour, variable, value, n_dropped`` (value null when every value of the
    hour was out of range).
    """
    if source == "chartevents":
        join = "JOIN win w ON e.stay_id = w.stay_id"
    else:  # labevents: hadm_id is often empty, attach by subject and time
        join = "JOIN win w ON e.subject_id = w.subject_id"
    return f"""
    SELECT stay_id, hour, variable,
           avg(v) FILTER (WHERE v BETWEEN lo AND hi) AS value,
           count(*) FILTER (WHERE NOT (v BETWEEN lo AND hi)) AS n_dropped
    FROM (
        SELECT w.stay_id, {_HOUR} AS hour, m.variable, m.lo, m.hi, {_CONVERTED} AS v
        FROM {source} e
        JOIN item_map m ON e.itemid = m.itemid AND m.source = {_q(source)}
             AND m.aggregate = 'mean'
        {join}
        WHERE e.charttime >= w.intime AND e.charttime < w.prediction_time
          AND e.valuenum IS NOT NULL
    )
    GROUP BY ALL
    """


def output_sql() -> str:
    """Hourly sum of output volumes minus subtracted (irrigant) volumes, per sum variable."""
    return f"""
    SELECT stay_id, hour, variable,
           coalesce(sum(v) FILTER (WHERE role = 'value' AND v BETWEEN lo AND hi), 0)
             - coalesce(sum(v) FILTER (WHERE role = 'subtract' AND v BETWEEN lo AND hi), 0)
             AS value,
           count(*) FILTER (WHERE NOT (v BETWEEN lo AND hi)) AS n_dropped,
           count(*) FILTER (WHERE role = 'value' AND v BETWEEN lo AND hi) AS n_kept
    FROM (
        SELECT w.stay_id, {_HOUR} AS hour, m.variable, m.role, m.lo, m.hi, e.value AS v
        FROM outputevents e
        JOIN item_map m ON e.itemid = m.itemid AND m.source = 'outputevents'
             AND m.aggregate = 'sum'
        JOIN win w ON e.stay_id = w.stay_id
        WHERE e.charttime >= w.intime AND e.charttime < w.prediction_time
          AND e.value IS NOT NULL
    )
    GROUP BY ALL
    """


def onehot_sql(v: VariableSpec) -> str:
    """One row per (stay, hour, category) for hours with a recorded value: 1 for the category of
    the hour's last value (ties by the larger string), 0 for the others."""
    cases = " ".join(
        "WHEN "
        + " OR ".join(f"upper(val) LIKE {_q(p.upper() + '%')}" for p in prefixes)
        + f" THEN {_q(name)}"
        for name, prefixes in v.categories.items()
    )
    other = _q(v.other) if v.other else "NULL"
    names = ", ".join(_q(n) for n in v.output_names)
    items = ", ".join(str(i) for i in v.itemids)
    table = v.source
    return f"""
    WITH last AS (
        SELECT w.stay_id, {_HOUR} AS hour, trim(e.value) AS val
        FROM {table} e JOIN win w ON e.stay_id = w.stay_id
        WHERE e.itemid IN ({items}) AND e.value IS NOT NULL AND trim(e.value) <> ''
          AND e.charttime >= w.intime AND e.charttime < w.prediction_time
        QUALIFY row_number() OVER (
            PARTITION BY w.stay_id, hour ORDER BY e.charttime DESC, val DESC) = 1
    ), cat AS (
        SELECT stay_id, hour, CASE {cases} ELSE {other} END AS category FROM last
    )
    SELECT stay_id, hour, name AS variable,
           CAST(category = name AS DOUBLE) AS value, 0 AS n_dropped
    FROM cat CROSS JOIN (SELECT unnest([{names}]) AS name)
    WHERE category IS NOT NULL
    """
