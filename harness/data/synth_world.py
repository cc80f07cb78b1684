"""The latent world of the synthetic dataset: patients, admissions, ICU stays, hidden state.

Everything observable (EHR events, diagnosis codes, outcomes, chest X-rays) is derived from the
frames built here, so the planted ground truth is defined in one place: ``PHENOTYPE_MECHANISMS``
says which latent drives each phenotype label and through which modality it is visible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import pandas as pd

HOUR = 3600
DAY = 24 * HOUR
#: Seconds since 1970 of 2100-01-01 00:00:00: shifted MIMIC years lie between 2100 and 2200.
EPOCH_2100 = 4102444800
YEAR = 365 * DAY

#: Latent components of one admission's clinical state (all standard normal).
LATENTS = (
    "sev",  # overall severity: visible in many EHR variables, drives death, LoS, image count
    "aki",
    "stroke",
    "dysrh",
    "dm",
    "fe",
    "gi",
    "liver",
    "sepsis",
    "shock",
    "pleura",
    "pneumonia",
    "lowresp",
    "resp_a",
    "resp_b",
    "chf_a",
    "chf_b",
    "htn_a",
    "htn_b",
)

#: phenotype id (tasks/phenotypes.yaml) -> (source, latents, prevalence, mechanism text)
PHENOTYPE_MECHANISMS: dict[str, tuple[str, tuple[str, ...], float, str]] = {
    "acute_renal_failure": (
        "ehr",
        ("aki",),
        0.25,
        "latent 'aki': creatinine and BUN rise, hourly urine output falls",
    ),
    "acute_cerebrovascular_disease": (
        "ehr",
        ("stroke",),
        0.12,
        "latent 'stroke': GCS eye, verbal and motor scores fall",
    ),
    "acute_myocardial_infarction": ("neither", (), 0.08, "random, prevalence 0.08"),
    "cardiac_dysrhythmias": (
        "ehr",
        ("dysrh",),
        0.30,
        "latent 'dysrh': heart rhythm 220048 charted as AF, heart rate up",
    ),
    "chronic_kidney_disease": ("neither", (), 0.15, "random, prevalence 0.15"),
    "copd_bronchiectasis": ("neither", (), 0.12, "random, prevalence 0.12"),
    "complications_of_care": ("neither", (), 0.15, "random, prevalence 0.15"),
    "conduction_disorders": ("neither", (), 0.07, "random, prevalence 0.07"),
    "chf_nonhypertensive": (
        "both",
        ("chf_a", "chf_b"),
        0.25,
        "1[(a + b)/sqrt2 + noise > t]: a ('chf_a') lowers sodium and raises admission weight (EHR "
        "only); b ('chf_b') enlarges the heart shadow (CXR only)",
    ),
    "coronary_atherosclerosis": ("neither", (), 0.28, "random, prevalence 0.28"),
    "diabetes_with_complications": (
        "ehr",
        ("dm",),
        0.12,
        "latent 'dm': glucose and anion gap up, bicarbonate down",
    ),
    "diabetes_without_complication": ("neither", (), 0.18, "random, prevalence 0.18"),
    "lipid_disorders": ("neither", (), 0.30, "random, prevalence 0.30"),
    "essential_hypertension": ("neither", (), 0.40, "random, prevalence 0.40"),
    "fluid_electrolyte_disorders": ("ehr", ("fe",), 0.35, "latent 'fe': potassium and chloride up"),
    "gi_hemorrhage": ("ehr", ("gi",), 0.12, "latent 'gi': hemoglobin and hematocrit down, BUN up"),
    "hypertension_with_complications": (
        "both",
        ("htn_a", "htn_b"),
        0.18,
        "1[(a + b)/sqrt2 + noise > t]: a ('htn_a') raises systolic, diastolic and mean blood "
        "pressure (EHR only); b ('htn_b') widens the upper mediastinum (CXR only)",
    ),
    "other_liver_diseases": (
        "ehr",
        ("liver",),
        0.12,
        "latent 'liver': bilirubin and INR up, platelets down",
    ),
    "other_lower_respiratory": (
        "cxr",
        ("lowresp",),
        0.15,
        "latent 'lowresp': a lung nodule / mass drawn on the image",
    ),
    "other_upper_respiratory": ("neither", (), 0.05, "random, prevalence 0.05"),
    "pleurisy_pneumothorax_collapse": (
        "cxr",
        ("pleura",),
        0.18,
        "latent 'pleura': pleural effusion (fluid level) or pneumothorax (lucent rim) on the image",
    ),
    "pneumonia": (
        "cxr",
        ("pneumonia",),
        0.20,
        "latent 'pneumonia': focal consolidation drawn on the image",
    ),
    "respiratory_failure": (
        "both",
        ("resp_a", "resp_b"),
        0.25,
        "1[(a + b)/sqrt2 + noise > t]: a ('resp_a') lowers SpO2 and pO2, raises respiratory rate, "
        "FiO2 and pCO2 (EHR only); b ('resp_b') adds diffuse bilateral opacity (CXR only)",
    ),
    "septicemia": (
        "ehr",
        ("sepsis",),
        0.20,
        "latent 'sepsis': temperature, WBC and lactate up, heart rate up",
    ),
    "shock": (
        "ehr",
        ("shock",),
        0.12,
        "latent 'shock': blood pressures down, heart rate and lactate up",
    ),
}

#: Label noise (sd) added to the latent before thresholding: keeps ideal models below AUROC 1.
LABEL_NOISE = {"ehr": 0.4, "cxr": 0.4, "both": 0.3}

#: Mortality: logit = MORT_INTERCEPT + sum(coef * latent) + MORT_AGE * (age - 65) / 15.
MORT_INTERCEPT = -2.9
MORT_COEF = {"sev": 1.2, "shock": 0.5, "resp_b": 0.8}
MORT_AGE = 0.3
P_ICU_DEATH = 0.7
#: Insurance group whose vitals are charted less often and whose EHR signals are weaker.
FAIRNESS_GROUP = ("insurance", "Medicaid")
FAIRNESS_AMPLITUDE = 0.45
FAIRNESS_CHART_RATE = 0.35

RACES = [  # (MIMIC string, probability)
    ("WHITE", 0.55),
    ("WHITE - OTHER EUROPEAN", 0.04),
    ("WHITE - RUSSIAN", 0.02),
    ("WHITE - BRAZILIAN", 0.01),
    ("PORTUGUESE", 0.01),
    ("BLACK/AFRICAN AMERICAN", 0.10),
    ("BLACK/CAPE VERDEAN", 0.01),
    ("BLACK/CARIBBEAN ISLAND", 0.01),
    ("HISPANIC/LATINO - PUERTO RICAN", 0.03),
    ("HISPANIC OR LATINO", 0.02),
    ("HISPANIC/LATINO - DOMINICAN", 0.01),
    ("SOUTH AMERICAN", 0.01),
    ("ASIAN", 0.02),
    ("ASIAN - CHINESE", 0.015),
    ("ASIAN - SOUTH EAST ASIAN", 0.005),
    ("OTHER", 0.04),
    ("UNKNOWN", 0.05),
    ("UNABLE TO OBTAIN", 0.01),
    ("PATIENT DECLINED TO ANSWER", 0.01),
    ("AMERICAN INDIAN/ALASKA NATIVE", 0.005),
    ("MULTIPLE RACE/ETHNICITY", 0.005),
]
INSURANCES = [("Medicare", 0.42), ("Medicaid", 0.18), ("Private", 0.25), ("Other", 0.15)]
ADMISSION_TYPES = [
    ("EW EMER.", 0.45),
    ("URGENT", 0.15),
    ("DIRECT EMER.", 0.06),
    ("ELECTIVE", 0.08),
    ("SURGICAL SAME DAY ADMISSION", 0.08),
    ("OBSERVATION ADMIT", 0.10),
    ("EU OBSERVATION", 0.04),
    ("DIRECT OBSERVATION", 0.02),
    ("AMBULATORY OBSERVATION", 0.02),
]
ADMISSION_LOCATIONS = [
    ("EMERGENCY ROOM", 0.5),
    ("TRANSFER FROM HOSPITAL", 0.15),
    ("PHYSICIAN REFERRAL", 0.15),
    ("WALK-IN/SELF REFERRAL", 0.05),
    ("PROCEDURE SITE", 0.05),
    ("CLINIC REFERRAL", 0.05),
    ("TRANSFER FROM SKILLED NURSING FACILITY", 0.03),
    ("INFORMATION NOT AVAILABLE", 0.02),
]
DISCHARGE_LOCATIONS = [
    ("HOME", 0.30),
    ("HOME HEALTH CARE", 0.25),
    ("SKILLED NURSING FACILITY", 0.18),
    ("REHAB", 0.10),
    ("CHRONIC/LONG TERM ACUTE CARE", 0.05),
    ("HOSPICE", 0.03),
    ("AGAINST ADVICE", 0.02),
    ("ACUTE HOSPITAL", 0.03),
    ("", 0.04),
]
LANGUAGES = [("ENGLISH", 0.9), ("?", 0.1)]
MARITAL = [("MARRIED", 0.42), ("SINGLE", 0.3), ("WIDOWED", 0.12), ("DIVORCED", 0.08), ("", 0.08)]
CAREUNITS = [
    ("Medical Intensive Care Unit (MICU)", 0.25),
    ("Medical/Surgical Intensive Care Unit (MICU/SICU)", 0.18),
    ("Cardiac Vascular Intensive Care Unit (CVICU)", 0.17),
    ("Surgical Intensive Care Unit (SICU)", 0.14),
    ("Coronary Care Unit (CCU)", 0.11),
    ("Trauma SICU (TSICU)", 0.10),
    ("Neuro Surgical Intensive Care Unit (Neuro SICU)", 0.05),
]
ANCHOR_YEAR_GROUPS = ["2008 - 2010", "2011 - 2013", "2014 - 2016", "2017 - 2019", "2020 - 2022"]


def choice(rng: np.random.Generator, table: list[tuple[str, float]], n: int) -> np.ndarray:
    """Draw ``n`` strings from a (value, probability) table."""
    values = np.array([v for v, _ in table], dtype=object)
    p = np.array([w for _, w in table], dtype=float)
    return values[rng.choice(len(values), size=n, p=p / p.sum())]


def unique_ids(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    """``n`` distinct sorted integers in [low, high)."""
    ids = np.unique(rng.integers(low, high, size=n + n // 10 + 16))
    while ids.size < n:
        ids = np.unique(np.concatenate([ids, rng.integers(low, high, size=n)]))
    return np.sort(rng.choice(ids, size=n, replace=False))


def threshold(prevalence: float, sd: float) -> float:
    return NormalDist(0.0, sd).inv_cdf(1.0 - prevalence)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class World:
    """Patients, admissions and stays with their latent state (times in int seconds)."""

    patients: pd.DataFrame
    admissions: pd.DataFrame  # one row per admission, latent columns z_<name>, labels y_<id>
    stays: pd.DataFrame  # one row per ICU stay, with its admission's latent and group columns


def build_world(rng: np.random.Generator, n_patients: int) -> World:
    """Draw patients, their admissions and ICU stays, the latent state, labels and outcomes."""
    n = n_patients
    subject_id = unique_ids(rng, n, 10_000_000, 20_000_000)
    minor = rng.random(n) < 0.02
    anchor_age = np.where(
        minor, rng.integers(15, 18, n), np.clip(np.round(rng.normal(63, 16, n)), 18, 91)
    ).astype(np.int64)
    anchor_year = rng.integers(2110, 2190, n)
    group_idx = rng.integers(0, len(ANCHOR_YEAR_GROUPS), n)
    patients = pd.DataFrame(
        {
            "subject_id": subject_id,
            "gender": np.where(rng.random(n) < 0.56, "M", "F"),
            "anchor_age": anchor_age,
            "anchor_year": anchor_year,
            "anchor_year_group": np.array(ANCHOR_YEAR_GROUPS, dtype=object)[group_idx],
            "race": choice(rng, RACES, n),
            "insurance": choice(rng, INSURANCES, n),
            "language": choice(rng, LANGUAGES, n),
            "marital_status": choice(rng, MARITAL, n),
            "real_year0": 2008 + 3 * group_idx + rng.integers(0, 3, n),
        }
    )

    # Admissions: 1..5 per patient, spaced weeks to years apart.
    n_adm = np.minimum(rng.geometric(0.6, n), 5)
    pidx = np.repeat(np.arange(n), n_adm)
    k = np.concatenate([np.arange(c) for c in n_adm]) if n else np.zeros(0, int)
    m = pidx.size
    adm = pd.DataFrame({"pidx": pidx, "k": k})
    gap = np.where(k == 0, rng.uniform(0, 2.5 * YEAR, m), rng.uniform(30 * DAY, 500 * DAY, m))
    # Cumulative gaps per patient (the stay lengths are added below, under a few weeks each).
    cum = pd.Series(gap).groupby(pidx).cumsum().to_numpy() + k * 40 * DAY
    jan1 = EPOCH_2100 + (anchor_year[pidx] - 2100) * YEAR
    adm["admittime"] = (jan1 + cum).astype(np.int64) // 60 * 60
    adm["subject_id"] = subject_id[pidx]

    for name in LATENTS:
        adm[f"z_{name}"] = rng.standard_normal(m)
    adm["noise"] = rng.standard_normal(m)
    age = anchor_age[pidx] + (adm["admittime"].to_numpy() - jan1) // YEAR
    adm["age"] = age

    # Phenotype labels.
    for pid, (source, latents, prev, _) in PHENOTYPE_MECHANISMS.items():
        if source == "neither":
            adm[f"y_{pid}"] = (rng.random(m) < prev).astype(np.int8)
            continue
        sd = LABEL_NOISE[source]
        if source == "both":
            score = (adm[f"z_{latents[0]}"] + adm[f"z_{latents[1]}"]) / math.sqrt(2.0)
        else:
            score = adm[f"z_{latents[0]}"]
        score = score + sd * rng.standard_normal(m)
        adm[f"y_{pid}"] = (score > threshold(prev, math.sqrt(1.0 + sd * sd))).astype(np.int8)

    # Death in this admission.
    logit = MORT_INTERCEPT + MORT_AGE * (age - 65) / 15.0
    for name, coef in MORT_COEF.items():
        logit = logit + coef * adm[f"z_{name}"].to_numpy()
    dies = rng.random(m) < sigmoid(logit)
    # A patient dies at most once: drop admissions after the first death.
    died_before = pd.Series(dies.astype(int)).groupby(pidx).cumsum().to_numpy() - dies
    keep = died_before == 0
    adm = adm.loc[keep].reset_index(drop=True)
    dies = dies[keep]
    m = len(adm)
    adm["dies"] = dies
    adm["icu_death"] = dies & (rng.random(m) < P_ICU_DEATH)
    adm["hadm_id"] = unique_ids(rng, m, 20_000_000, 30_000_000)[rng.permutation(m)]
    adm["admission_type"] = choice(rng, ADMISSION_TYPES, m)
    adm["admission_location"] = choice(rng, ADMISSION_LOCATIONS, m)
    adm["admit_provider_id"] = [f"P{v:05X}" for v in rng.integers(0, 0xFFFFF, m)]

    # ICU stays: 1 (90 %) or 2 per admission.
    n_st = np.where(rng.random(m) < 0.1, 2, 1)
    aidx = np.repeat(np.arange(m), n_st)
    j = np.concatenate([np.arange(c) for c in n_st]) if m else np.zeros(0, int)
    s = aidx.size
    last = j == n_st[aidx] - 1
    sev = adm["z_sev"].to_numpy()[aidx]
    resp = adm["z_resp_a"].to_numpy()[aidx]
    los = np.exp(rng.normal(np.log(3.0) + 0.35 * sev + 0.15 * resp, 0.65))
    los = np.clip(los, 0.15, 45.0) * DAY
    dies_s = adm["dies"].to_numpy()[aidx]
    icu_death = adm["icu_death"].to_numpy()[aidx] & last
    death_after = np.clip(np.exp(rng.normal(np.log(3.0 * DAY), 0.9, s)), 4 * HOUR, 30 * DAY)
    los = np.where(icu_death, death_after, los)
    intime = np.zeros(s, dtype=np.int64)
    outtime = np.zeros(s, dtype=np.int64)
    admit = adm["admittime"].to_numpy()
    first_delay = rng.uniform(0.3 * HOUR, 30 * HOUR, s)
    between = rng.uniform(1 * DAY, 4 * DAY, s)
    for jj in range(2):
        sel = j == jj
        if jj == 0:
            intime[sel] = admit[aidx[sel]] + first_delay[sel]
        else:
            intime[sel] = outtime[np.flatnonzero(sel) - 1] + between[sel]
        outtime[sel] = intime[sel] + los[sel]
    intime = intime // 60 * 60
    outtime = np.maximum(outtime // 60 * 60, intime + 3600)
    stays = pd.DataFrame(
        {
            "aidx": aidx,
            "subject_id": adm["subject_id"].to_numpy()[aidx],
            "hadm_id": adm["hadm_id"].to_numpy()[aidx],
            "stay_id": unique_ids(rng, s, 30_000_000, 40_000_000)[rng.permutation(s)],
            "intime": intime,
            "outtime": outtime,
            "last_in_adm": last,
            "icu_death": icu_death,
            "dies": dies_s,
            "first_careunit": choice(rng, CAREUNITS, s),
        }
    )
    stays["last_careunit"] = np.where(
        rng.random(s) < 0.9, stays["first_careunit"], choice(rng, CAREUNITS, s)
    )
    stays["los"] = (stays["outtime"] - stays["intime"]) / DAY

    # Admission times derived from the stays.
    last_out = stays.groupby("aidx")["outtime"].max().to_numpy()
    hosp_death = adm["dies"].to_numpy() & ~adm["icu_death"].to_numpy()
    after = np.where(hosp_death, rng.uniform(0.5, 10, m), rng.uniform(0.5, 8, m)) * DAY
    dischtime = np.where(adm["icu_death"].to_numpy(), last_out, last_out + after)
    dischtime = dischtime.astype(np.int64) // 60 * 60
    adm["dischtime"] = dischtime
    adm["deathtime"] = np.where(adm["dies"].to_numpy(), dischtime, -1)
    adm["discharge_location"] = np.where(
        adm["dies"].to_numpy(), "DIED", choice(rng, DISCHARGE_LOCATIONS, m)
    )
    ed = np.isin(adm["admission_type"].to_numpy(), ["EW EMER.", "EU OBSERVATION", "URGENT"])
    ed &= rng.random(m) < 0.9
    adm["edregtime"] = np.where(ed, admit - rng.integers(2 * HOUR, 10 * HOUR, m) // 60 * 60, -1)
    adm["edouttime"] = np.where(ed, admit + rng.integers(0, HOUR, m) // 60 * 60, -1)
    adm["hospital_expire_flag"] = adm["dies"].astype(np.int64)
    # ICD-10 replaced ICD-9 in October 2015: the real year is the anchor group plus elapsed years.
    apidx = adm["pidx"].to_numpy()
    real_year = patients["real_year0"].to_numpy()[apidx]
    years_since = (admit - (EPOCH_2100 + (anchor_year[apidx] - 2100) * YEAR)) // YEAR
    adm["icd_version"] = np.where(real_year + years_since >= 2016, 10, 9)

    # Patient date of death: in-hospital deaths, plus some deaths within a year of discharge.
    pat_death = np.full(n, -1, dtype=np.int64)
    dead_adm = adm.loc[adm["dies"], ["pidx", "deathtime"]]
    pat_death[dead_adm["pidx"].to_numpy()] = dead_adm["deathtime"].to_numpy()
    last_disch = adm.groupby("pidx")["dischtime"].max()
    later = (pat_death < 0) & (rng.random(n) < 0.08)
    later_idx = np.flatnonzero(later)
    later_idx = later_idx[np.isin(later_idx, last_disch.index.to_numpy())]
    pat_death[later_idx] = last_disch.loc[later_idx].to_numpy() + rng.integers(
        DAY, 365 * DAY, later_idx.size
    )
    patients["dod"] = pat_death

    # Stay-level copies of what the EHR and CXR generators need.
    for col in [c for c in adm.columns if c.startswith("z_")] + ["age", "icd_version"]:
        stays[col] = adm[col].to_numpy()[aidx]
    stays["insurance"] = patients["insurance"].to_numpy()[adm["pidx"].to_numpy()[aidx]]
    stays["deathtime"] = adm["deathtime"].to_numpy()[aidx]
    stays["fair_group"] = stays["insurance"] == FAIRNESS_GROUP[1]
    adm["race"] = patients["race"].to_numpy()[adm["pidx"]]
    adm["insurance"] = patients["insurance"].to_numpy()[adm["pidx"]]
    adm["language"] = patients["language"].to_numpy()[adm["pidx"]]
    adm["marital_status"] = patients["marital_status"].to_numpy()[adm["pidx"]]
    return World(patients=patients, admissions=adm, stays=stays)
