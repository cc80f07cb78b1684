"""The embedded default dataset: a synthetic MIMIC-IV + MIMIC-CXR-JPG tree with known truth.

``generate`` writes the real file names, columns and value conventions (see
``synth_world`` for the latent state, ``synth_ehr`` for the event tables and ``synth_cxr`` for the
images) plus ``ground_truth.json`` (which modality carries each label's signal, the planted
fairness effect) and ``dataset.json`` (generator, arguments, counts). Same arguments give
byte-identical files.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness import config
from harness.errors import InputError, UsageError
from harness.io import atomic_directory, atomic_write_json
from harness.progress import Bar, bar

log = logging.getLogger(__name__)

GENERATOR = "harness.data.synthetic"
GENERATOR_VERSION = 2
GZIP_LEVEL = 6
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

HOSP, ICU, CXR = "mimic-iv/hosp", "mimic-iv/icu", "mimic-cxr-jpg"
TABLES = {  # relative path -> columns, in the order of the real files
    f"{HOSP}/patients.csv.gz": [
        "subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"],
    f"{HOSP}/admissions.csv.gz": [
        "subject_id", "hadm_id", "admittime", "dischtime", "deathtime", "admission_type",
        "admit_provider_id", "admission_location", "discharge_location", "insurance",
        "language", "marital_status", "race", "edregtime", "edouttime", "hospital_expire_flag"],
    f"{HOSP}/diagnoses_icd.csv.gz": ["subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"],
    f"{HOSP}/labevents.csv.gz": None,
    f"{HOSP}/d_labitems.csv.gz": ["itemid", "label", "fluid", "category"],
    f"{ICU}/icustays.csv.gz": [
        "subject_id", "hadm_id", "stay_id", "first_careunit", "last_careunit", "intime",
        "outtime", "los"],
    f"{ICU}/chartevents.csv.gz": None,
    f"{ICU}/outputevents.csv.gz": None,
    f"{ICU}/d_items.csv.gz": None,
    f"{CXR}/mimic-cxr-2.0.0-metadata.csv.gz": None,
    f"{CXR}/mimic-cxr-2.0.0-split.csv.gz": ["dicom_id", "study_id", "subject_id", "split"],
    f"{CXR}/mimic-cxr-2.0.0-chexpert.csv.gz": None,
}  # fmt: skip


def table_columns(rel: str) -> list[str]:
    """The fixed header of table ``rel`` (`TABLES`; tables listed with None vary and are written
    with the columns of their frame).

    Raises:
        KeyError: ``rel`` has no fixed header.
    """
    columns = TABLES[rel]
    if columns is None:
        raise KeyError(f"{rel} has no fixed column list")
    return columns


CHEXPERT = [
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
    "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other",
    "Pneumonia", "Pneumothorax", "Support Devices",
]  # fmt: skip
METADATA_COLUMNS = [
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning",
]  # fmt: skip
#: Diagnosis codes that belong to none of the 25 phenotypes (checked against the phenotype file).
FILLER_CODES = {
    9: ["V5861", "2859", "3051", "V1582", "53081", "V5867", "3004"],
    10: ["Z7901", "D649", "F17210", "K219", "Z87891", "Z794", "F329", "G4733"],
}


def _check_args(out: Path, n_patients: int, image_size: int, overwrite: bool) -> None:
    if n_patients < 1:
        raise UsageError(f"--n-patients must be at least 1, got {n_patients}.")
    if not 64 <= image_size <= 4096:
        raise UsageError(f"--image-size must be between 64 and 4096 pixels, got {image_size}.")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory: choose another --out directory.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(
            f"{out} already exists and is not empty: pass --overwrite to replace it, "
            "or choose another --out directory."
        )


def generate(
    out: Path,
    *,
    n_patients: int = config.DEFAULT_N_PATIENTS,
    seed: int = config.DEFAULT_SEED,
    image_size: int = config.DEFAULT_IMAGE_SIZE,
    overwrite: bool = False,
) -> dict:
    """Write a synthetic MIMIC-IV + MIMIC-CXR-JPG tree to ``out``; return a summary.

    The summary maps ``rows`` (table path -> row count), ``n_images``, ``n_patients``,
    ``n_stays`` and ``seconds``.

    Raises:
        UsageError: for n_patients < 1, image_size outside [64, 4096], or a non-empty ``out``
            without ``overwrite``.
    """
    from harness.data.synth_world import build_world

    out = Path(out)
    _check_args(out, n_patients, image_size, overwrite)
    t0 = time.perf_counter()
    rng = np.random.default_rng([seed, 1])
    with (
        bar(f"synth {n_patients} patients", len(TABLES), unit="table") as tables,
        atomic_directory(out, overwrite=overwrite) as tmp,
    ):
        world = build_world(rng, n_patients)
        log.info("world: %d patients, %d stays", len(world.patients), len(world.stays))
        rows = _write_tables(tmp, world, seed, image_size, tables)
        n_images = rows.pop("_n_images")
        counts: dict[str, Any] = {
            "rows": dict(sorted(rows.items())),
            "n_images": n_images,
            "n_patients": int(len(world.patients)),
            "n_admissions": int(len(world.admissions)),
            "n_stays": int(len(world.stays)),
        }
        info = {
            "generator": GENERATOR,
            "generator_version": GENERATOR_VERSION,
            "harness_version": _harness_version(),
            "arguments": {"n_patients": n_patients, "seed": seed, "image_size": image_size},
            "mimic_iv_version": "2.2 (layout), synthetic",
            "mimic_cxr_jpg_version": "2.0.0 (layout), synthetic",
            "counts": counts,
        }
        atomic_write_json(tmp / "dataset.json", info)
        atomic_write_json(tmp / "ground_truth.json", ground_truth())
    seconds = time.perf_counter() - t0
    log.info("wrote %s in %.1f s", out, seconds)
    return {**counts, "seconds": round(seconds, 2), "path": str(out)}


def ensure_default_dataset() -> Path:
    """Return the default dataset directory, generating it with the config defaults if absent."""
    path = config.default_dataset_dir()
    if not (path / "dataset.json").is_file():
        generate(
            path,
            n_patients=config.DEFAULT_N_PATIENTS,
            seed=config.DEFAULT_SEED,
            image_size=config.DEFAULT_IMAGE_SIZE,
            overwrite=path.exists(),
        )
    return path


def summarize_dataset(path: Path) -> dict:
    """Counts of a dataset tree: rows per table, images, patients, stays, size on disk.

    Synthetic datasets answer from their ``dataset.json``; any other tree of the same layout is
    counted by reading the compressed CSVs.
    """
    path = Path(path)
    if not path.is_dir():
        raise InputError(
            "dataset directory not found", path=path, fix="run `harness synth` or pass --out"
        )
    info_file = path / "dataset.json"
    if info_file.is_file():
        info = json.loads(info_file.read_text())
        summary = dict(info["counts"])
        summary["generator"] = info.get("generator")
        summary["arguments"] = info.get("arguments")
    else:
        rows = {}
        for rel in TABLES:
            f = path / rel
            if f.is_file():
                with gzip.open(f, "rb") as fh:
                    rows[rel] = max(sum(1 for _ in fh) - 1, 0)
        if not rows:
            raise InputError(
                "no MIMIC-IV / MIMIC-CXR-JPG tables found",
                path=path,
                fix=f"expected files such as {HOSP}/patients.csv.gz",
            )
        summary = {"rows": rows, "n_images": sum(1 for _ in (path / CXR / "files").rglob("*.jpg"))}
    summary["path"] = str(path)
    summary["bytes"] = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return summary


def _harness_version() -> str:
    from harness import __version__

    return __version__


# ----------------------------------------------------------------------------- writing


def write_csv_gz(path: Path, frames: Iterable[pd.DataFrame], columns: list[str]) -> int:
    """Stream frames into one gzip CSV with a fixed header (mtime 0, no file name: reproducible)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=GZIP_LEVEL) as gz,
        io.TextIOWrapper(gz, encoding="utf-8", newline="") as text,
    ):
        first = True
        for df in frames:
            df[columns].to_csv(
                text, header=first, index=False, date_format=TIME_FORMAT, lineterminator="\n"
            )
            first = False
            n += len(df)
        if first:
            text.write(",".join(columns) + "\n")
    return n


def _t(seconds: np.ndarray) -> np.ndarray:
    """Int seconds (negative = missing) -> datetime64[s] with NaT."""
    s = np.asarray(seconds, dtype=np.int64)
    out = s.astype("datetime64[s]")
    out[s < 0] = np.datetime64("NaT")
    return out


def _write_tables(root: Path, world, seed: int, image_size: int, tables: Bar) -> dict:
    """Every table (each counted on ``tables``) and the images; their row counts."""
    from harness.data import synth_ehr

    rows: dict[str, int] = {}
    pat, adm, st = world.patients, world.admissions, world.stays

    def write(rel: str, frames: Iterable[pd.DataFrame], columns: list[str]) -> None:
        rows[rel] = write_csv_gz(root / rel, frames, columns)
        tables.advance()

    dod = pd.Series(_t(pat["dod"].to_numpy())).dt.strftime("%Y-%m-%d").fillna("")
    patients = pat.assign(dod=dod.to_numpy()).sort_values("subject_id")
    rel = f"{HOSP}/patients.csv.gz"
    write(rel, [patients], table_columns(rel))

    admissions = adm.assign(
        admittime=_t(adm["admittime"]),
        dischtime=_t(adm["dischtime"]),
        deathtime=_t(adm["deathtime"]),
        edregtime=_t(adm["edregtime"]),
        edouttime=_t(adm["edouttime"]),
    ).sort_values(["subject_id", "hadm_id"])
    rel = f"{HOSP}/admissions.csv.gz"
    write(rel, [admissions], table_columns(rel))

    rel = f"{HOSP}/diagnoses_icd.csv.gz"
    write(rel, [_diagnoses(adm, seed)], table_columns(rel))

    icustays = st.assign(intime=_t(st["intime"]), outtime=_t(st["outtime"])).sort_values(
        ["subject_id", "intime"]
    )
    icustays["los"] = icustays["los"].round(4)
    rel = f"{ICU}/icustays.csv.gz"
    write(rel, [icustays], table_columns(rel))

    rel = f"{HOSP}/d_labitems.csv.gz"
    write(rel, [synth_ehr.d_labitems()], table_columns(rel))
    d_items = synth_ehr.d_items()
    rel = f"{ICU}/d_items.csv.gz"
    write(rel, [d_items], list(d_items.columns))

    # The three event tables are produced together, block by block, and streamed to disk.
    buffered: dict[str, list[pd.DataFrame]] = {"lab": [], "out": []}
    with bar(f"events of {len(st)} stays", len(st), unit="stay", keep=True) as stays:

        def charts():
            for chart, lab, out in synth_ehr.ehr_chunks(st, seed, progress=stays):
                buffered["lab"].append(lab)
                buffered["out"].append(out)
                yield chart

        write(f"{ICU}/chartevents.csv.gz", charts(), synth_ehr.CHART_COLUMNS)
    write(f"{HOSP}/labevents.csv.gz", buffered["lab"], synth_ehr.LAB_COLUMNS)
    write(f"{ICU}/outputevents.csv.gz", buffered["out"], synth_ehr.OUTPUT_COLUMNS)
    buffered.clear()

    rows["_n_images"] = _write_cxr(root, world, seed, image_size, write)
    return rows


def _diagnoses(adm: pd.DataFrame, seed: int) -> pd.DataFrame:
    """One code per positive phenotype (unique to that phenotype) plus unrelated filler codes."""
    from harness.data.synth_world import PHENOTYPE_MECHANISMS

    rng = np.random.default_rng([seed, 404])
    pheno = load_phenotypes()
    owners: dict[tuple[int, str], set[str]] = {}
    for p in pheno:
        for version in (9, 10):
            for code in p[f"icd{version}"]:
                owners.setdefault((version, str(code)), set()).add(p["id"])
    hadm = adm["hadm_id"].to_numpy()
    subj = adm["subject_id"].to_numpy()
    ver = adm["icd_version"].to_numpy()
    parts = []
    for p in pheno:
        pos = np.flatnonzero(adm[f"y_{p['id']}"].to_numpy() == 1)
        for v in (9, 10):
            codes = [str(c) for c in p[f"icd{v}"] if owners[(v, str(c))] == {p["id"]}]
            sel = pos[ver[pos] == v]
            pick = np.array(codes, dtype=object)[rng.integers(0, len(codes), sel.size)]
            parts.append(pd.DataFrame({"a": sel, "icd_code": pick}))
    assert set(PHENOTYPE_MECHANISMS) == {p["id"] for p in pheno}
    n_fill = rng.integers(1, 6, len(adm))
    a = np.repeat(np.arange(len(adm)), n_fill)
    fill = np.empty(a.size, dtype=object)
    for v in (9, 10):
        ok = [c for c in FILLER_CODES[v] if (v, c) not in owners]
        sel = ver[a] == v
        fill[sel] = np.array(ok, dtype=object)[rng.integers(0, len(ok), int(sel.sum()))]
    parts.append(pd.DataFrame({"a": a, "icd_code": fill}))
    dx = pd.concat(parts, ignore_index=True).drop_duplicates(["a", "icd_code"])
    dx["r"] = rng.random(len(dx))
    dx = dx.sort_values(["a", "r"])
    dx["seq_num"] = dx.groupby("a").cumcount() + 1
    a = dx["a"].to_numpy()
    out = pd.DataFrame(
        {
            "subject_id": subj[a],
            "hadm_id": hadm[a],
            "seq_num": dx["seq_num"].to_numpy(),
            "icd_code": dx["icd_code"].to_numpy(),
            "icd_version": ver[a],
        }
    )
    return out.sort_values(["subject_id", "hadm_id", "seq_num"]).reset_index(drop=True)


def load_phenotypes() -> list[dict]:
    """The 25 phenotype definitions (id, name, icd9, icd10) from ``tasks/phenotypes.yaml``."""
    import yaml

    path = config.tasks_dir() / "phenotypes.yaml"
    if not path.is_file():
        raise InputError("phenotype definitions not found", path=path, fix="set HARNESS_TASKS")
    return yaml.safe_load(path.read_text())["phenotypes"]


# ----------------------------------------------------------------------------- chest X-rays


def _dicom_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    raw = rng.integers(0, 2**32, (n, 5), dtype=np.uint64)
    ids = np.array(["-".join(f"{v:08x}" for v in row) for row in raw], dtype=object)
    if len(set(ids)) != n:  # astronomically unlikely; keep ids unique regardless
        ids = np.array([f"{i:08x}" + s[8:] for i, s in enumerate(ids)], dtype=object)
    return ids


def _study_findings(st: pd.DataFrame, s: np.ndarray, phase: np.ndarray, t: np.ndarray, rng):
    """Finding intensities (n x len(FINDINGS)) of studies of stays ``s`` in ``phase``."""
    from harness.data.synth_cxr import FINDINGS
    from harness.data.synth_world import LABEL_NOISE, PHENOTYPE_MECHANISMS, threshold

    def label_scale(pid: str, latent: str) -> np.ndarray:
        _, _, prev, _ = PHENOTYPE_MECHANISMS[pid]
        sd = LABEL_NOISE["cxr"]
        th = threshold(prev, math.sqrt(1 + sd * sd))
        return np.clip((st[f"z_{latent}"].to_numpy()[s] - th + 1.0) / 2.0, 0.0, 1.0)

    def cont(latent: str) -> np.ndarray:
        return np.clip((st[f"z_{latent}"].to_numpy()[s] + 1.5) / 3.5, 0.0, 1.0)

    pleura = label_scale("pleurisy_pneumothorax_collapse", "pleura")
    ptx_kind = rng.random(s.size) < 0.3
    z = st
    vent = (z["z_resp_a"].to_numpy() + 0.3 * z["z_sev"].to_numpy())[s] > 0.9
    f = {
        "cardio": cont("chf_b"),
        "mediastinum": cont("htn_b"),
        "opacity": cont("resp_b"),
        "consolidation": label_scale("pneumonia", "pneumonia"),
        "effusion": np.where(ptx_kind, 0.0, pleura),
        "pneumothorax": np.where(ptx_kind, pleura, 0.0),
        "nodule": label_scale("other_lower_respiratory", "lowresp"),
        "devices": vent.astype(float),
    }
    m = np.stack([f[k] for k in FINDINGS], axis=1)
    col = {k: i for i, k in enumerate(FINDINGS)}
    before, after, outpt = phase == "before", phase == "after", phase == "outpatient"
    m[before] *= 0.85
    m[before, col["devices"]] = 0.0
    m[outpt] *= 0.25
    m[outpt, col["devices"]] = 0.0
    # Images after the prediction window reveal the outcome: white-out before death, recovery else.
    death = st["deathtime"].to_numpy()[s]
    dying = after & (death > 0) & (t < death)
    m[after & ~dying] *= 0.35
    m[after & ~dying, col["devices"]] = 0.0
    m[dying, col["opacity"]] = 1.0
    m[dying, col["effusion"]] = np.maximum(m[dying, col["effusion"]], 0.95)
    m[dying, col["devices"]] = 1.0
    return m


def _chexpert(m: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    from harness.data.synth_cxr import FINDINGS

    col = {k: i for i, k in enumerate(FINDINGS)}
    n = m.shape[0]

    def grade(v: np.ndarray) -> np.ndarray:
        out = np.full(n, np.nan)
        out[v > 0.6] = 1.0
        out[(v > 0.45) & (v <= 0.6)] = -1.0
        out[(v <= 0.3) & (rng.random(n) < 0.3)] = 0.0
        return out

    lab = {
        "Cardiomegaly": grade(m[:, col["cardio"]]),
        "Enlarged Cardiomediastinum": grade(m[:, col["mediastinum"]]),
        "Edema": grade(m[:, col["opacity"]]),
        "Consolidation": grade(m[:, col["consolidation"]]),
        "Pneumonia": grade(m[:, col["consolidation"]] * 0.95),
        "Pleural Effusion": grade(m[:, col["effusion"]]),
        "Pneumothorax": grade(m[:, col["pneumothorax"]]),
        "Lung Lesion": grade(m[:, col["nodule"]]),
        "Lung Opacity": grade(m[:, [col["opacity"], col["consolidation"], col["nodule"]]].max(1)),
        "Support Devices": np.where(m[:, col["devices"]] > 0.5, 1.0, np.nan),
        "Atelectasis": np.where(rng.random(n) < 0.08, -1.0, np.nan),
        "Fracture": np.where(rng.random(n) < 0.01, 1.0, np.nan),
        "Pleural Other": np.where(rng.random(n) < 0.01, 1.0, np.nan),
    }
    any_pos = np.zeros(n, bool)
    for v in lab.values():
        any_pos |= v == 1.0
    lab["No Finding"] = np.where(any_pos, np.nan, 1.0)
    return pd.DataFrame({k: lab[k] for k in CHEXPERT})


def _write_cxr(
    root: Path,
    world,
    seed: int,
    image_size: int,
    write: Callable[[str, Iterable[pd.DataFrame], list[str]], None],
) -> int:
    """The CXR tables (through ``write``, which records their row counts) and the images; the
    number of images."""
    from harness.data.synth_cxr import write_images
    from harness.data.synth_world import DAY, HOUR, sigmoid, unique_ids

    rng = np.random.default_rng([seed, 505])
    st = world.stays
    n = len(st)
    intime, outtime = st["intime"].to_numpy(), st["outtime"].to_numpy()
    sev, resp = st["z_sev"].to_numpy(), st["z_resp_a"].to_numpy()
    # Availability depends on EHR-visible state only (severity, respiratory component).
    lam = 0.25 + 0.9 * sigmoid(1.5 * (resp + 0.5 * sev))
    n_in = rng.poisson(lam)
    n_before = (rng.random(n) < 0.2).astype(int)
    long_stay = (outtime - intime) > 48 * HOUR
    n_after = np.where(long_stay, rng.poisson(0.5, n), 0)
    plans = []
    for label, k, lo, hi in (
        ("before", n_before, intime - 20 * HOUR, intime - HOUR // 2),
        ("in", n_in, intime, np.minimum(outtime, intime + 48 * HOUR)),
        ("after", n_after, intime + 48 * HOUR, np.minimum(outtime, intime + 9 * DAY)),
    ):
        s = np.repeat(np.arange(n), k)
        t = lo[s] + rng.random(s.size) * (hi[s] - lo[s])
        plans.append((s, np.full(s.size, label, dtype=object), t))
    # Some outpatient studies weeks before an admission, unrelated to any ICU stay.
    first = np.flatnonzero(st["aidx"].diff().fillna(1).to_numpy() != 0)
    outp = first[rng.random(first.size) < 0.06]
    t_out = intime[outp] - rng.uniform(10, 200, outp.size) * DAY
    plans.append((outp, np.full(outp.size, "outpatient", dtype=object), t_out))
    s = np.concatenate([p[0] for p in plans])
    phase = np.concatenate([p[1] for p in plans])
    t = np.concatenate([p[2] for p in plans]).astype(np.int64)
    t_ms = t * 1000 + rng.integers(0, 1000, s.size)  # study times have milliseconds
    m = _study_findings(st, s, phase, t, rng)
    ns = s.size
    study_id = unique_ids(rng, ns, 50_000_000, 60_000_000)[rng.permutation(ns)]
    icu_phase = (phase == "in") | (phase == "after")
    portable = np.where(icu_phase, rng.random(ns) < 0.92, rng.random(ns) < 0.4)
    frontal_view = np.where(portable, "AP", "PA").astype(object)
    lateral = rng.random(ns) < np.where(portable, 0.08, 0.6)
    studies = pd.DataFrame(
        {
            "s": s,
            "subject_id": st["subject_id"].to_numpy()[s],
            "study_id": study_id,
            "t_ms": t_ms,
            "portable": portable,
        }
    )
    chex = _chexpert(m, rng)
    chex.insert(0, "study_id", study_id)
    chex.insert(0, "subject_id", studies["subject_id"].to_numpy())
    chex = chex.sort_values(["subject_id", "study_id"])

    # Images: one frontal per study, plus a lateral for some.
    img_study = np.concatenate([np.arange(ns), np.flatnonzero(lateral)])
    view = np.concatenate(
        [
            frontal_view,
            np.where(rng.random(int(lateral.sum())) < 0.2, "LL", "LATERAL").astype(object),
        ]
    )
    blank = (rng.random(view.size) < 0.03) & np.isin(view, ["AP", "PA"])
    view_pos = np.where(blank, "", view)
    ni = img_study.size
    dicom = _dicom_ids(rng, ni)
    dt = _t(t_ms[img_study] // 1000)
    date = pd.Series(dt).dt.strftime("%Y%m%d").astype(np.int64).to_numpy()
    hms = pd.Series(dt).dt.strftime("%H%M%S").astype(np.int64).to_numpy()
    study_time = np.round(hms + (t_ms[img_study] % 1000) / 1000.0, 3)
    desc = np.where(portable[img_study], "CHEST (PORTABLE AP)", "CHEST (PA AND LAT)")
    view_meaning = {
        "AP": "antero-posterior",
        "PA": "postero-anterior",
        "LATERAL": "lateral",
        "LL": "left lateral",
    }
    orient = np.where(portable[img_study], "Recumbent", "Erect")
    orient = np.where(rng.random(ni) < 0.05, "", orient)
    meta = pd.DataFrame(
        {
            "dicom_id": dicom,
            "subject_id": studies["subject_id"].to_numpy()[img_study],
            "study_id": study_id[img_study],
            "PerformedProcedureStepDescription": desc,
            "ViewPosition": view_pos,
            "Rows": image_size,
            "Columns": image_size,
            "StudyDate": date,
            "StudyTime": study_time,
            "ProcedureCodeSequence_CodeMeaning": desc,
            "ViewCodeSequence_CodeMeaning": [view_meaning[v] for v in view],
            "PatientOrientationCodeSequence_CodeMeaning": orient,
            "_f": list(m[img_study]),
            "_view": view,
        }
    ).sort_values(["subject_id", "study_id", "dicom_id"])
    meta = meta.reset_index(drop=True)
    subj = meta["subject_id"].to_numpy()
    u = np.unique(subj)
    split_draw = rng.choice(["train", "validate", "test"], u.size, p=[0.97, 0.01, 0.02])
    split_of = dict(zip(u, split_draw, strict=True))
    split = meta[["dicom_id", "study_id", "subject_id"]].assign(split=[split_of[v] for v in subj])

    rel = f"{CXR}/mimic-cxr-2.0.0-metadata.csv.gz"
    write(rel, [meta], METADATA_COLUMNS)
    rel = f"{CXR}/mimic-cxr-2.0.0-split.csv.gz"
    write(rel, [split], table_columns(rel))
    rel = f"{CXR}/mimic-cxr-2.0.0-chexpert.csv.gz"
    write(rel, [chex], ["subject_id", "study_id", *CHEXPERT])

    paths = [
        root / CXR / "files" / f"p{str(sj)[:2]}" / f"p{sj}" / f"s{sd}" / f"{di}.jpg"
        for sj, sd, di in zip(subj, meta["study_id"], meta["dicom_id"], strict=True)
    ]
    with bar("images", len(paths), unit="image", keep=True) as images:
        write_images(
            paths, np.stack(list(meta["_f"])), list(meta["_view"]), image_size, seed,
            progress=images,
        )  # fmt: skip
    return len(paths)


# ----------------------------------------------------------------------------- ground truth


def ground_truth() -> dict:
    """The planted mechanisms, in the ``ground_truth.json`` format (schema_version 1)."""
    from harness.data import synth_world as w

    names = {p["id"]: p["name"] for p in load_phenotypes()}
    mort = (
        f"death in the admission ~ Bernoulli(sigmoid({w.MORT_INTERCEPT} + "
        + " + ".join(f"{c} * {k}" for k, c in w.MORT_COEF.items())
        + f" + {w.MORT_AGE} * (age - 65) / 15)); 'sev' and 'shock' are visible in the EHR "
        "(lactate, blood pressure, GCS, urine, heart rate, worsening trend in those who die), "
        "'resp_b' only as diffuse opacity on the chest X-ray"
    )
    labels = {
        "mortality_in_hospital": {"mortality_in_hospital": {"source": "both", "mechanism": mort}},
        "mortality_icu": {
            "mortality_icu": {
                "source": "both",
                "mechanism": f"{int(w.P_ICU_DEATH * 100)} % of in-hospital deaths happen in the "
                "last ICU stay of the admission (ICU death is a subset of in-hospital death); "
                + mort,
            }
        },
        "los": {
            "los": {
                "source": "ehr",
                "mechanism": "log(ICU LoS in days) ~ Normal(log(3.0) + 0.35 sev + 0.15 resp_a, "
                "0.65); ICU deaths end the stay at the time of death",
            }
        },
        "phenotype": {
            names[pid]: {"source": source, "mechanism": text}
            for pid, (source, _, _, text) in w.PHENOTYPE_MECHANISMS.items()
        },
    }
    return {
        "schema_version": 1,
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "labels": labels,
        "fairness": [
            {
                "attribute": w.FAIRNESS_GROUP[0],
                "group": w.FAIRNESS_GROUP[1],
                "effect": f"vitals, GCS and rhythm charted at {w.FAIRNESS_CHART_RATE:.0%} of the "
                f"usual rate and every latent's effect on EHR values, including the "
                f"pre-death deterioration, scaled by {w.FAIRNESS_AMPLITUDE}: positives are "
                "less distinct in the EHR",
                "expected": "lowest_tpr",
            }
        ],
        "missingness": {
            "cxr_availability": "studies per stay within the first 48 h ~ Poisson(0.25 + 0.9 * "
            "sigmoid(1.5 * (resp_a + 0.5 * sev))): sicker and respiratory stays have more images, "
            "and availability depends only on EHR-visible latents; 20 % of stays also have a study "
            "up to 20 h before intime, stays longer than 48 h get Poisson(0.5) studies after the "
            "window whose findings reveal the outcome (white-out before death, resolution "
            "otherwise), and 6 % of first stays have an outpatient study months earlier",
        },
    }
