"""Synthetic MIMIC-IV event tables (chartevents, labevents, outputevents) and their dictionaries.

Each stay's latent state (see ``synth_world``) sets the level of every variable; events are drawn
hourly (vitals, urine) or per specimen (labs) over the first ~2.5 days of the stay, with gaps, a
less-charted fairness group, Fahrenheit temperatures, FiO2 fractions and rare out-of-range values.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from harness.data.synth_world import FAIRNESS_AMPLITUDE, FAIRNESS_CHART_RATE, HOUR

if TYPE_CHECKING:  # pragma: no cover
    from harness.progress import Bar

CHART_COLUMNS = [
    "subject_id", "hadm_id", "stay_id", "caregiver_id", "charttime", "storetime",
    "itemid", "value", "valuenum", "valueuom", "warning",
]  # fmt: skip
LAB_COLUMNS = [
    "labevent_id", "subject_id", "hadm_id", "specimen_id", "itemid", "order_provider_id",
    "charttime", "storetime", "value", "valuenum", "valueuom", "ref_range_lower",
    "ref_range_upper", "flag", "priority", "comments",
]  # fmt: skip
OUTPUT_COLUMNS = [
    "subject_id", "hadm_id", "stay_id", "caregiver_id", "charttime", "storetime",
    "itemid", "value", "valueuom",
]  # fmt: skip

#: Hours of events drawn per stay (beyond the 48-h window so that window cuts are exercised).
MAX_HOURS = 56
OUT_OF_RANGE_RATE = 0.002


@dataclass(frozen=True)
class Var:
    """How one variable is drawn: x = sum(coef * latent) + noise; value = transform(x)."""

    name: str
    kind: str  # lin: base + scale*x; log: base*exp(scale*x); neglog: 100 - base*exp(scale*x)
    base: float
    scale: float
    coefs: dict[str, float]
    stay_sd: float
    meas_sd: float
    decimals: int
    lo: float
    hi: float
    uom: str


def _value(v: Var, x: np.ndarray) -> np.ndarray:
    if v.kind == "lin":
        out = v.base + v.scale * x
    elif v.kind == "log":
        out = v.base * np.exp(v.scale * x)
    else:
        out = 100.0 - v.base * np.exp(v.scale * x)
    return np.round(np.clip(out, v.lo, v.hi), v.decimals)


VITALS = {  # (variable, chart period in hours)
    "heart_rate": (
        Var(
            "heart_rate",
            "lin",
            86,
            14,
            {"sev": 0.5, "shock": 0.5, "sepsis": 0.35, "dysrh": 0.45},
            0.5,
            0.35,
            0,
            30,
            220,
            "bpm",
        ),
        1.0,
    ),
    "sbp": (
        Var(
            "sbp",
            "lin",
            121,
            17,
            {"shock": -0.8, "sev": -0.3, "htn_a": 0.9},
            0.5,
            0.35,
            0,
            55,
            240,
            "mmHg",
        ),
        1.0,
    ),
    "dbp": (
        Var(
            "dbp",
            "lin",
            64,
            10,
            {"shock": -0.7, "sev": -0.2, "htn_a": 0.8},
            0.5,
            0.4,
            0,
            25,
            140,
            "mmHg",
        ),
        1.0,
    ),
    "mbp": (
        Var(
            "mbp",
            "lin",
            80,
            11,
            {"shock": -0.8, "sev": -0.3, "htn_a": 0.85},
            0.5,
            0.35,
            0,
            35,
            170,
            "mmHg",
        ),
        1.0,
    ),
    "resp_rate": (
        Var(
            "resp_rate",
            "lin",
            19,
            4.5,
            {"resp_a": 0.8, "sev": 0.3, "sepsis": 0.2},
            0.5,
            0.45,
            0,
            6,
            50,
            "insp/min",
        ),
        1.0,
    ),
    "spo2": (
        Var("spo2", "neglog", 2.6, 0.4, {"resp_a": 1.0, "sev": 0.25}, 0.4, 0.4, 0, 60, 100, "%"),
        1.0,
    ),
    "temperature": (
        Var(
            "temperature",
            "lin",
            37.0,
            0.55,
            {"sepsis": 1.0, "sev": 0.1},
            0.4,
            0.4,
            1,
            33.5,
            41.5,
            "°C",
        ),
        4.0,
    ),
    "glucose": (
        Var("glucose", "log", 125, 0.3, {"dm": 1.0, "sev": 0.1}, 0.4, 0.3, 0, 30, 900, "mg/dL"),
        6.0,
    ),
    "fio2": (Var("fio2", "lin", 45, 14, {"resp_a": 0.9}, 0.4, 0.3, 0, 21, 100, "%"), 4.0),
}
VITAL_ITEMS = {
    "heart_rate": (220045,),
    "sbp": (220179, 220050),  # non-invasive, arterial
    "dbp": (220180, 220051),
    "mbp": (220181, 220052),
    "resp_rate": (220210, 224690),
    "spo2": (220277,),
    "temperature": (223762, 223761),  # Celsius, Fahrenheit
    "glucose": (225664, 220621),
    "fio2": (223835,),
}
WEIGHT = Var("weight", "lin", 81, 15, {"chf_a": 0.8}, 0.6, 0.0, 1, 35, 250, "kg")
GCS = {  # itemid -> (max score, deficit slope, texts from 1 to max)
    220739: (4, 1.1, ["No Response", "To Pain", "To Speech", "Spontaneously"]),
    223900: (5, 1.6, ["No Response", "Incomprehensible sounds", "Inappropriate Words",
                      "Confused", "Oriented"]),
    223901: (6, 1.9, ["No response", "Abnormal extension", "Abnormal Flexion", "Flex-withdraws",
                      "Localizes Pain", "Obeys Commands"]),
}  # fmt: skip
RHYTHMS = {
    "SR": "SR (Sinus Rhythm)",
    "ST": "ST (Sinus Tachycardia)",
    "SB": "SB (Sinus Bradycardia)",
    "AF": "AF (Atrial Fibrillation)",
    "1AV": "1st AV (First degree AV Block)",
    "PAC": "PAC (Premature Atrial Contractions)",
}

LABS = [  # (variable, itemid, panel, ref low, ref high)
    (Var("creatinine", "log", 1.0, 0.45, {"aki": 1.0, "sev": 0.2}, 0.3, 0.1, 1, 0.2, 20, "mg/dL"),
     50912, "chem", 0.5, 1.2),
    (Var("bun", "log", 19, 0.45, {"aki": 0.8, "gi": 0.45, "sev": 0.2}, 0.3, 0.1, 0, 3, 250,
         "mg/dL"), 51006, "chem", 6, 20),
    (Var("sodium", "lin", 139, 3.5, {"chf_a": -1.0}, 0.5, 0.3, 0, 110, 170, "mEq/L"),
     50983, "chem", 133, 145),
    (Var("potassium", "lin", 4.1, 0.45, {"fe": 1.0, "aki": 0.3}, 0.5, 0.35, 1, 2.0, 9.0, "mEq/L"),
     50971, "chem", 3.3, 5.1),
    (Var("chloride", "lin", 104, 4, {"fe": 0.9}, 0.5, 0.3, 0, 75, 135, "mEq/L"),
     50902, "chem", 96, 108),
    (Var("bicarbonate", "lin", 24, 3.5, {"sev": -0.5, "dm": -0.5}, 0.5, 0.3, 0, 5, 45, "mEq/L"),
     50882, "chem", 22, 32),
    (Var("anion_gap", "lin", 13, 3, {"dm": 0.9, "sev": 0.4}, 0.5, 0.3, 0, 3, 45, "mEq/L"),
     50868, "chem", 8, 20),
    (Var("hemoglobin", "lin", 11, 1.5, {"gi": -1.0}, 0.5, 0.2, 1, 3.5, 19, "g/dL"),
     51222, "cbc", 13.7, 17.5),
    (Var("hematocrit", "lin", 33, 4.5, {"gi": -1.0}, 0.5, 0.2, 1, 11, 58, "%"),
     51221, "cbc", 40, 51),
    (Var("wbc", "log", 9, 0.35, {"sepsis": 1.0, "sev": 0.2}, 0.4, 0.15, 1, 0.3, 90, "K/uL"),
     51301, "cbc", 4.0, 11.0),
    (Var("platelets", "log", 220, 0.35, {"liver": -0.6, "sev": -0.3}, 0.4, 0.1, 0, 5, 1200,
         "K/uL"), 51265, "cbc", 150, 400),
    (Var("lactate", "log", 1.6, 0.4, {"sev": 0.8, "shock": 0.6, "sepsis": 0.4}, 0.3, 0.15, 1,
         0.3, 25, "mmol/L"), 50813, "gas", 0.5, 2.0),
    (Var("ph", "lin", 7.38, 0.05, {"sev": -0.5, "resp_a": -0.4}, 0.4, 0.3, 2, 6.8, 7.7, "units"),
     50820, "gas", 7.35, 7.45),
    (Var("po2", "log", 95, 0.3, {"resp_a": -0.8}, 0.4, 0.3, 0, 30, 500, "mm Hg"),
     50821, "gas", 80, 100),
    (Var("pco2", "lin", 41, 6, {"resp_a": 0.8}, 0.4, 0.3, 0, 15, 120, "mm Hg"),
     50818, "gas", 35, 45),
    (Var("bilirubin", "log", 0.8, 0.55, {"liver": 1.1}, 0.3, 0.1, 1, 0.1, 40, "mg/dL"),
     50885, "lft", 0.0, 1.5),
    (Var("inr", "log", 1.2, 0.22, {"liver": 1.0}, 0.3, 0.1, 1, 0.8, 12, ""),
     51237, "lft", 0.9, 1.1),
]  # fmt: skip
PANEL_PERIOD_H = {"chem": 8.0, "cbc": 8.0, "gas": 8.0, "lft": 24.0}
URINE = Var("urine", "log", 75, 0.45, {"aki": -0.9, "sev": -0.4, "shock": -0.3}, 0.4, 0.4, 0,
            0, 900, "mL")  # fmt: skip
URINE_ITEMS = (226559, 226560, 226561)  # Foley, Void, Condom Cath
GU_IRRIGANT_IN, GU_IRRIGANT_OUT = 227488, 227489

D_ITEMS = [  # itemid, label, abbreviation, linksto, category, unitname, param_type
    (220045, "Heart Rate", "HR", "chartevents", "Routine Vital Signs", "bpm", "Numeric"),
    (220046, "Heart rate Alarm - High", "HR Alarm - High", "chartevents", "Alarms", "bpm",
     "Numeric"),
    (220048, "Heart Rhythm", "Heart Rhythm", "chartevents", "Routine Vital Signs", "", "Text"),
    (220050, "Arterial Blood Pressure systolic", "ABPs", "chartevents", "Routine Vital Signs",
     "mmHg", "Numeric"),
    (220051, "Arterial Blood Pressure diastolic", "ABPd", "chartevents", "Routine Vital Signs",
     "mmHg", "Numeric"),
    (220052, "Arterial Blood Pressure mean", "ABPm", "chartevents", "Routine Vital Signs", "mmHg",
     "Numeric"),
    (220179, "Non Invasive Blood Pressure systolic", "NBPs", "chartevents",
     "Routine Vital Signs", "mmHg", "Numeric"),
    (220180, "Non Invasive Blood Pressure diastolic", "NBPd", "chartevents",
     "Routine Vital Signs", "mmHg", "Numeric"),
    (220181, "Non Invasive Blood Pressure mean", "NBPm", "chartevents", "Routine Vital Signs",
     "mmHg", "Numeric"),
    (225312, "ART BP Mean", "ART BP Mean", "chartevents", "Routine Vital Signs", "mmHg",
     "Numeric"),
    (220210, "Respiratory Rate", "RR", "chartevents", "Respiratory", "insp/min", "Numeric"),
    (224690, "Respiratory Rate (Total)", "Respiratory Rate (Total)", "chartevents",
     "Respiratory", "insp/min", "Numeric"),
    (220277, "O2 saturation pulseoxymetry", "SpO2", "chartevents", "Respiratory", "%", "Numeric"),
    (223761, "Temperature Fahrenheit", "Temperature F", "chartevents", "Routine Vital Signs",
     "°F", "Numeric"),
    (223762, "Temperature Celsius", "Temperature C", "chartevents", "Routine Vital Signs", "°C",
     "Numeric"),
    (220621, "Glucose (serum)", "Glucose (serum)", "chartevents", "Labs", "mg/dL", "Numeric"),
    (225664, "Glucose finger stick (range 70-100)", "Glucose FS (range 70 -100)", "chartevents",
     "Routine Vital Signs", "mg/dL", "Numeric"),
    (226537, "Glucose (whole blood)", "Glucose (whole blood)", "chartevents", "Labs", "mg/dL",
     "Numeric"),
    (223835, "Inspired O2 Fraction", "FiO2", "chartevents", "Respiratory", "", "Numeric"),
    (220739, "GCS - Eye Opening", "GCS - Eye Opening", "chartevents", "Neurological", "",
     "Text"),
    (223900, "GCS - Verbal Response", "GCS - Verbal Response", "chartevents", "Neurological",
     "", "Text"),
    (223901, "GCS - Motor Response", "GCS - Motor Response", "chartevents", "Neurological", "",
     "Text"),
    (226512, "Admission Weight (Kg)", "Admission Weight (Kg)", "chartevents", "General", "kg",
     "Numeric"),
    (224639, "Daily Weight", "Daily Weight", "chartevents", "General", "kg", "Numeric"),
    (226559, "Foley", "Foley", "outputevents", "Output", "mL", "Numeric"),
    (226560, "Void", "Void", "outputevents", "Output", "mL", "Numeric"),
    (226561, "Condom Cath", "Condom Cath", "outputevents", "Output", "mL", "Numeric"),
    (226584, "Ileoconduit", "Ileoconduit", "outputevents", "Output", "mL", "Numeric"),
    (226563, "Suprapubic", "Suprapubic", "outputevents", "Output", "mL", "Numeric"),
    (226564, "R Nephrostomy", "R Nephrostomy", "outputevents", "Output", "mL", "Numeric"),
    (226565, "L Nephrostomy", "L Nephrostomy", "outputevents", "Output", "mL", "Numeric"),
    (226567, "Straight Cath", "Straight Cath", "outputevents", "Output", "mL", "Numeric"),
    (226557, "R Ureteral Stent", "R Ureteral Stent", "outputevents", "Output", "mL", "Numeric"),
    (226558, "L Ureteral Stent", "L Ureteral Stent", "outputevents", "Output", "mL", "Numeric"),
    (227488, "GU Irrigant Volume In", "GU Irrigant Volume In", "outputevents", "Output", "mL",
     "Numeric"),
    (227489, "GU Irrigant/Urine Volume Out", "GU Irrigant/Urine Volume Out", "outputevents",
     "Output", "mL", "Numeric"),
    (226588, "Chest Tube #1", "Chest Tube #1", "outputevents", "Output", "mL", "Numeric"),
]  # fmt: skip
D_LABITEMS = [  # itemid, label, fluid, category
    (50813, "Lactate", "Blood", "Blood Gas"),
    (50818, "pCO2", "Blood", "Blood Gas"),
    (50820, "pH", "Blood", "Blood Gas"),
    (50821, "pO2", "Blood", "Blood Gas"),
    (50868, "Anion Gap", "Blood", "Chemistry"),
    (50882, "Bicarbonate", "Blood", "Chemistry"),
    (50885, "Bilirubin, Total", "Blood", "Chemistry"),
    (50893, "Calcium, Total", "Blood", "Chemistry"),
    (50902, "Chloride", "Blood", "Chemistry"),
    (50912, "Creatinine", "Blood", "Chemistry"),
    (50931, "Glucose", "Blood", "Chemistry"),
    (50960, "Magnesium", "Blood", "Chemistry"),
    (50971, "Potassium", "Blood", "Chemistry"),
    (50983, "Sodium", "Blood", "Chemistry"),
    (51006, "Urea Nitrogen", "Blood", "Chemistry"),
    (51221, "Hematocrit", "Blood", "Hematology"),
    (51222, "Hemoglobin", "Blood", "Hematology"),
    (51237, "INR(PT)", "Blood", "Hematology"),
    (51265, "Platelet Count", "Blood", "Hematology"),
    (51300, "WBC Count", "Blood", "Hematology"),
    (51301, "White Blood Cells", "Blood", "Hematology"),
]
NORMALS = {220045: (60, 100), 220179: (90, 140), 220277: (92, 100), 220210: (12, 20)}


def d_items() -> pd.DataFrame:
    rows = [
        (*r, *(NORMALS.get(r[0], (np.nan, np.nan)))) for r in sorted(D_ITEMS, key=lambda r: r[0])
    ]
    cols = ["itemid", "label", "abbreviation", "linksto", "category", "unitname", "param_type"]
    return pd.DataFrame(rows, columns=[*cols, "lownormalvalue", "highnormalvalue"])


def d_labitems() -> pd.DataFrame:
    return pd.DataFrame(D_LABITEMS, columns=["itemid", "label", "fluid", "category"])


def _latent_x(v: Var, z: dict[str, np.ndarray], amp: np.ndarray, idx: np.ndarray) -> np.ndarray:
    x = np.zeros(idx.size)
    for name, coef in v.coefs.items():
        x += coef * z[name][idx]
    return x * amp[idx]


def _fmt(values: np.ndarray, decimals: int) -> np.ndarray:
    if decimals == 0:
        return values.astype(np.int64).astype(str).astype(object)
    return values.astype(str).astype(object)


def _times(t: np.ndarray) -> np.ndarray:
    return t.astype("datetime64[s]")


def ehr_chunks(
    stays: pd.DataFrame, seed: int, chunk_stays: int = 1500, progress: Bar | None = None
) -> Iterator[tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]]:
    """Yield (chartevents, labevents, outputevents) per block of whole patients, sorted; each
    block's stays are counted on ``progress`` once the consumer is done with it."""
    stays = stays.sort_values(["subject_id", "intime"]).reset_index(drop=True)
    subj = stays["subject_id"].to_numpy()
    starts = [0]
    while starts[-1] < len(stays):
        end = min(starts[-1] + chunk_stays, len(stays))
        while end < len(stays) and subj[end] == subj[end - 1]:
            end += 1
        starts.append(end)
    lab_offset = 0
    for c, (a, b) in enumerate(zip(starts[:-1], starts[1:], strict=True)):
        rng = np.random.default_rng([seed, 101, c])
        chart, lab, out = _block(stays.iloc[a:b].reset_index(drop=True), rng)
        lab.insert(0, "labevent_id", np.arange(lab_offset + 1, lab_offset + len(lab) + 1))
        lab_offset += len(lab)
        yield chart, lab, out
        if progress is not None:
            progress.advance(b - a)


def _block(st: pd.DataFrame, rng: np.random.Generator):
    n = len(st)
    z = {c[2:]: st[c].to_numpy() for c in st.columns if c.startswith("z_")}
    amp = np.where(st["fair_group"].to_numpy(), FAIRNESS_AMPLITUDE, 1.0)
    chart_rate = np.where(st["fair_group"].to_numpy(), FAIRNESS_CHART_RATE, 1.0)
    intime = st["intime"].to_numpy()
    outtime = st["outtime"].to_numpy()
    dies = st["dies"].to_numpy() & st["last_in_adm"].to_numpy()
    n_hours = np.clip(np.ceil((outtime - intime) / HOUR).astype(np.int64), 1, MAX_HOURS)
    sidx = np.repeat(np.arange(n), n_hours)
    hour = np.arange(sidx.size) - np.repeat(np.cumsum(n_hours) - n_hours, n_hours)
    # Per-stay charting gap (a few hours with no vitals at all).
    gap_start = rng.integers(0, 48, n)
    gap_len = rng.integers(0, 7, n)
    in_gap = (hour >= gap_start[sidx]) & (hour < gap_start[sidx] + gap_len[sidx])
    # Deterioration of those who die: their state worsens along the window.
    # The fairness group's deterioration is as muted as the rest of its signal.
    trend = dies[sidx] * hour / 48.0 * 0.8 * amp[sidx]
    vent = z["resp_a"] + 0.3 * z["sev"] + 0.5 * rng.standard_normal(n) > 0.9
    art_line = z["sev"] + 0.5 * rng.standard_normal(n) > 0.6
    fahrenheit = rng.random(n) < 0.75
    caregivers = rng.integers(10000, 99999, (n, 3))

    frames: list[dict[str, np.ndarray]] = []

    def emit(mask, itemid, valuenum, value, uom):
        """Queue the rows of one variable; full-length arrays are indexed by the kept rows."""
        rows = np.flatnonzero(mask)
        s = sidx[rows]
        frames.append(
            {
                "s": s,
                "charttime": intime[s] + hour[rows] * HOUR + rng.integers(0, 60, rows.size) * 60,
                "itemid": np.full(rows.size, itemid, np.int64)
                if np.ndim(itemid) == 0
                else itemid[rows],
                "valuenum": np.full(rows.size, np.nan) if valuenum is None else valuenum[rows],
                "value": value(rows),
                "valueuom": np.full(rows.size, uom, dtype=object)
                if isinstance(uom, str)
                else uom[rows],
                "warning": (rng.random(rows.size) < 0.01).astype(np.int64),
            }
        )

    for name, (v, period) in VITALS.items():
        x = _latent_x(v, z, amp, sidx) + v.stay_sd * rng.standard_normal(n)[sidx]
        sev_sign = np.sign(v.coefs.get("sev", 0.0))
        x = x + sev_sign * trend + v.meas_sd * rng.standard_normal(sidx.size)
        val = _value(v, x)
        p = chart_rate[sidx] * (0.92 if period == 1 else 1.0 / period)
        obs = (rng.random(sidx.size) < p) & ~in_gap
        items = VITAL_ITEMS[name]
        itemid = np.full(sidx.size, items[0], dtype=np.int64)
        uom = np.full(sidx.size, v.uom, dtype=object)
        num = val.astype(float)
        dec = v.decimals
        if name in ("sbp", "dbp", "mbp"):
            itemid[art_line[sidx]] = items[1]
        elif name == "resp_rate":
            itemid[vent[sidx]] = items[1]
        elif name == "glucose":
            itemid[rng.random(sidx.size) < 0.15] = items[1]
        elif name == "fio2":
            obs &= vent[sidx]
            frac = rng.random(sidx.size) < 0.15
            num = np.where(frac, np.round(val / 100.0, 2), val)
            uom[:] = ""
        elif name == "temperature":
            f = fahrenheit[sidx]
            itemid[f] = items[1]
            num = np.where(f, np.round(val * 9 / 5 + 32, 1), val)
            uom[f] = "°F"
        bad = rng.random(sidx.size) < OUT_OF_RANGE_RATE
        num = np.where(bad, num * 100.0, num)
        if name == "fio2":
            text = np.array([f"{q:g}" for q in num], dtype=object)
            emit(obs, itemid, num, lambda r, t=text: t[r], uom)
        else:
            emit(obs, itemid, num, lambda r, q=num, d=dec: _fmt(q[r], d), uom)

    # GCS every 4 hours, as text with the score in valuenum.
    deficit_base = 0.9 * z["stroke"] + 0.4 * z["sev"] + 0.3 * rng.standard_normal(n)
    obs_gcs = (rng.random(sidx.size) < 0.25 * np.maximum(chart_rate[sidx], 0.6)) & ~in_gap
    deficit = amp[sidx] * deficit_base[sidx] + trend + 0.3 * rng.standard_normal(sidx.size) - 0.4
    for gcs_item, (top, slope, texts) in GCS.items():
        score = np.clip(np.round(top - slope * np.maximum(deficit, 0.0)), 1, top).astype(np.int64)
        labels = np.array(texts, dtype=object)
        emit(obs_gcs, np.int64(gcs_item), score.astype(float), lambda r, s=score, lb=labels:
             lb[s[r] - 1], "")  # fmt: skip

    # Heart rhythm every 4 hours: strings, no valuenum.
    p_af = 1.0 / (1.0 + np.exp(-(-2.4 + 2.2 * amp * z["dysrh"])))
    af = rng.random(sidx.size) < p_af[sidx]
    hr_level = 86 + 14 * (_latent_x(VITALS["heart_rate"][0], z, amp, np.arange(n)))
    code = np.where(hr_level[sidx] > 105, "ST", np.where(hr_level[sidx] < 62, "SB", "SR"))
    other = rng.random(sidx.size)
    code = np.where(other < 0.04, "1AV", np.where(other < 0.07, "PAC", code))
    code = np.where(af, "AF", code).astype(object)
    rhythm = np.array([RHYTHMS[c] for c in code], dtype=object) if code.size else code
    obs_r = (rng.random(sidx.size) < 0.25 * np.maximum(chart_rate[sidx], 0.6)) & ~in_gap
    emit(obs_r, np.int64(220048), None, lambda r: rhythm[r], "")

    # Admission weight once, in the first hour.
    wx = _latent_x(WEIGHT, z, amp, np.arange(n)) + WEIGHT.stay_sd * rng.standard_normal(n)
    weight = _value(WEIGHT, wx)
    first = hour == 0
    emit(first, np.int64(226512), weight[sidx], lambda r: _fmt(weight[sidx[r]], 1), "kg")

    chart = {k: np.concatenate([f[k] for f in frames]) for k in frames[0]}
    s = chart.pop("s")
    m = s.size
    ct = chart["charttime"]
    chart_df = pd.DataFrame(
        {
            "subject_id": st["subject_id"].to_numpy()[s],
            "hadm_id": st["hadm_id"].to_numpy()[s],
            "stay_id": st["stay_id"].to_numpy()[s],
            "caregiver_id": caregivers[s, rng.integers(0, 3, m)],
            "charttime": _times(ct),
            "storetime": _times(ct + rng.integers(1, 45, m) * 60),
            "itemid": chart["itemid"].astype(np.int64),
            "value": chart["value"],
            "valuenum": chart["valuenum"],
            "valueuom": chart["valueuom"],
            "warning": chart["warning"],
        }
    )
    chart_df = chart_df.sort_values(["subject_id", "charttime", "itemid"], kind="stable")

    lab_df = _labs(st, z, amp, dies, vent, rng)
    out_df = _urine(st, z, amp, sidx, hour, in_gap, trend, caregivers, rng)
    return chart_df.reset_index(drop=True), lab_df, out_df


def _labs(st, z, amp, dies, vent, rng) -> pd.DataFrame:
    n = len(st)
    intime = st["intime"].to_numpy()
    outtime = st["outtime"].to_numpy()
    end = np.minimum(outtime, intime + MAX_HOURS * HOUR)
    gas_stay = vent | (z["sev"] > 0.5) | (rng.random(n) < 0.25)
    stay_noise = rng.standard_normal((n, len(LABS)))
    parts = []
    for panel, period in PANEL_PERIOD_H.items():
        # Specimens from up to 6 h before ICU admission (drawn in the ED / ward) to the window end.
        start = intime - rng.integers(0, 6 * HOUR, n)
        k = np.maximum(np.ceil((end - start) / (period * HOUR)).astype(np.int64), 1)
        if panel == "gas":
            k = np.where(gas_stay, k, 0)
        s = np.repeat(np.arange(n), k)
        j = np.arange(s.size) - np.repeat(np.cumsum(k) - k, k)
        t = start[s] + (j * period * HOUR + rng.uniform(0, 0.6, s.size) * period * HOUR)
        t = t.astype(np.int64) // 60 * 60
        keep = t < end[s]
        s, t = s[keep], t[keep]
        spec = rng.integers(10_000_000, 99_999_999, s.size)
        hadm_missing = rng.random(s.size) < 0.35
        provider = np.where(
            rng.random(s.size) < 0.5,
            "",
            np.array([f"P{q:05X}" for q in rng.integers(0, 0xFFFFF, s.size)], dtype=object),
        )
        priority = np.where(rng.random(s.size) < 0.7, "STAT", "ROUTINE")
        frac = np.clip((t - intime[s]) / (48.0 * HOUR), 0, None)
        for li, (v, itemid, pan, lo, hi) in enumerate(LABS):
            if pan != panel:
                continue
            x = _latent_x(v, z, amp, s) + v.stay_sd * stay_noise[s, li]
            x = x + np.sign(v.coefs.get("sev", 0.0)) * dies[s] * frac * 0.8 * amp[s]
            val = _value(v, x + v.meas_sd * rng.standard_normal(s.size))
            ids = np.full(s.size, itemid, dtype=np.int64)
            if itemid == 51301:
                ids[rng.random(s.size) < 0.1] = 51300
            parts.append(
                pd.DataFrame(
                    {
                        "subject_id": st["subject_id"].to_numpy()[s],
                        "hadm_id": pd.array(
                            np.where(hadm_missing, 0, st["hadm_id"].to_numpy()[s]), dtype="Int64"
                        ),
                        "specimen_id": spec,
                        "itemid": ids,
                        "order_provider_id": provider,
                        "ct": t,
                        "value": _fmt(val, v.decimals),
                        "valuenum": val,
                        "valueuom": v.uom,
                        "ref_range_lower": float(lo),
                        "ref_range_upper": float(hi),
                        "flag": np.where((val < lo) | (val > hi), "abnormal", ""),
                        "priority": priority,
                        "comments": "",
                    }
                )
            )
    lab = pd.concat(parts, ignore_index=True)
    lab.loc[lab["hadm_id"] == 0, "hadm_id"] = pd.NA
    lab = lab.sort_values(["subject_id", "ct", "specimen_id", "itemid"], kind="stable")
    ct = lab.pop("ct").to_numpy()
    lab.insert(5, "charttime", _times(ct))
    lab.insert(6, "storetime", _times(ct + rng.integers(20, 180, len(lab)) * 60))
    return lab.reset_index(drop=True)


def _urine(st, z, amp, sidx, hour, in_gap, trend, caregivers, rng) -> pd.DataFrame:
    n = len(st)
    x = _latent_x(URINE, z, amp, sidx) + URINE.stay_sd * rng.standard_normal(n)[sidx]
    x = x - trend + URINE.meas_sd * rng.standard_normal(sidx.size)
    urine = _value(URINE, x)
    obs = (rng.random(sidx.size) < 0.85) & ~in_gap
    item_of_stay = np.array(URINE_ITEMS)[rng.choice(3, n, p=[0.8, 0.12, 0.08])]
    irrigated = rng.random(n) < 0.04
    itemid = item_of_stay[sidx]
    irr = irrigated[sidx]
    irr_in = np.round(rng.uniform(100, 800, sidx.size))
    itemid = np.where(irr, GU_IRRIGANT_OUT, itemid)
    value = np.where(irr, urine + irr_in, urine)
    intime = st["intime"].to_numpy()
    t = intime[sidx] + hour * HOUR + rng.integers(0, 60, sidx.size) * 60
    rows = np.flatnonzero(obs)
    irr_rows = np.flatnonzero(obs & irr)
    s_all = np.concatenate([sidx[rows], sidx[irr_rows]])
    t_all = np.concatenate([t[rows], t[irr_rows]])
    m = s_all.size
    out = pd.DataFrame(
        {
            "subject_id": st["subject_id"].to_numpy()[s_all],
            "hadm_id": st["hadm_id"].to_numpy()[s_all],
            "stay_id": st["stay_id"].to_numpy()[s_all],
            "caregiver_id": caregivers[s_all, rng.integers(0, 3, m)],
            "charttime": _times(t_all),
            "storetime": _times(t_all + rng.integers(1, 60, m) * 60),
            "itemid": np.concatenate([itemid[rows], np.full(irr_rows.size, GU_IRRIGANT_IN)]),
            "value": np.concatenate([value[rows], irr_in[irr_rows]]),
            "valueuom": "mL",
        }
    )
    return out.sort_values(["subject_id", "charttime", "itemid"], kind="stable").reset_index(
        drop=True
    )
