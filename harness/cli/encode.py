"""`harness encode`: encode a cohort's images and EHR series into the feature store."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from harness.tables import fit

console = Console()


def register(app: typer.Typer) -> None:
    @app.command()
    def encode(
        cohort: list[str] = typer.Option(
            None, "--cohort", "-c", help="Cohort name(s); default: base and matched."
        ),
        dataset: str = typer.Option(None, "--dataset", "-d", help="Dataset (default: synthetic)."),
        encoder: str = typer.Option("default", "--encoder", "-e", help="Encoder name; see --list."),
        cohort_path: Path = typer.Option(None, "--cohort-path", help="A built cohort directory."),
        batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per forward pass."),
        num_workers: int = typer.Option(None, "--workers", min=0, help="DataLoader workers."),
        device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: auto)."),
        list_: bool = typer.Option(False, "--list", help="List encoder families and exit."),
        executor: str = typer.Option(
            "local",
            "--executor",
            help="local (this process, a DataLoader) or ray (Ray Data: decode tasks on CPUs, "
            "encode actors; pip install -e '.[ray]'). The stored rows are the same.",
        ),
        ray_address: str = typer.Option(
            None, "--ray-address", help="Ray cluster (auto, ray://host:10001); default: local."
        ),
        concurrency: int = typer.Option(
            1, "--concurrency", min=1, help="Encode actors with --executor ray."
        ),
        gpus: float = typer.Option(
            0.0, "--gpus-per-actor", min=0.0, help="GPUs per encode actor (fractions share one)."
        ),
        repair: bool = typer.Option(
            False,
            "--repair",
            help="Verify every stored chunk and re-encode the missing or damaged ones.",
        ),
    ) -> None:
        """Encode every linked CXR image (once per encoder) and the cohort's hourly EHR tensors.

        Stored chunks are verified against their checksums; a missing or damaged one stops the
        run with an error naming it, and `--repair` re-encodes it.
        """
        if list_:
            _print_list()
            return
        from harness.encode.run import RayEncode
        from harness.encode.run import encode as run_encode
        from harness.errors import UsageError
        from harness.progress import display

        if executor not in ("local", "ray"):
            raise UsageError(f"unknown executor {executor!r}; valid executors: local, ray")
        ray = RayEncode(ray_address, concurrency, gpus) if executor == "ray" else None

        names = [None] if cohort_path is not None else (cohort or ["base", "matched"])
        for name in names:
            if name is not None and len(names) > 1:
                console.rule(f"cohort {name}")
            with display():  # images, then the EHR tensors: on stderr, on a terminal
                report = run_encode(
                    name or "base",
                    dataset,
                    encoder,
                    cohort_path=cohort_path,
                    batch_size=batch_size,
                    num_workers=num_workers,
                    device=device,
                    repair=repair,
                    ray=ray,
                )
            _print_report(report)


def _print_repair(report) -> None:
    res = report.repair
    if res is None:
        return
    if not res.damaged:
        console.print(f"[green]store verified[/]: {res.checked} committed chunks, none damaged")
    else:
        console.print(
            f"[yellow]repair[/]: {len(res.damaged)} damaged block(s) found; "
            f"{len(res.reencode)} chunk(s) re-encoded, {len(res.restored_ids)} id chunk(s) "
            f"restored, {len(res.restored_markers)} commit marker(s) restored, "
            f"{len(res.retired)} chunk(s) retired"
        )
        for p in res.damaged[:5]:
            console.print(f"  {p.describe()}", highlight=False)
    if res.adopted:
        console.print(f"recorded checksums for {res.adopted} chunk(s) written without them")
    for k in res.left:
        owners = ", ".join(res.left_owners.get(k, [])) or "another cohort"
        console.print(
            f"[yellow]chunk {k} is damaged but holds images of {owners}[/]: run "
            "`harness encode --repair` for that cohort"
        )
    if report.ehr_repaired:
        console.print("EHR features rewritten")


def _print_report(report) -> None:
    _print_repair(report)
    if report.forward_calls == 0:
        console.print(
            f"[green]nothing to encode[/]: all {report.n_images} images already in the store "
            "(no forward pass run)"
        )
    else:
        console.print(
            f"encoded {report.n_encoded} images in {report.seconds:.1f}s "
            f"({report.images_per_s:,.1f} img/s on {report.device}); "
            f"reused {report.n_reused}"
        )
    console.print(f"CXR features: [bold]{report.cxr_key}[/] ({report.encoder})")
    ehr_note = "reused" if report.ehr_reused else "written"
    console.print(f"EHR features: [bold]{report.ehr_key}[/] ({ehr_note})")
    if report.n_failed:
        console.print(
            f"[yellow]{report.n_failed} of {report.n_images} images unusable[/] "
            f"(counted as missing CXR): "
            + ", ".join(f"{k}={v}" for k, v in sorted(report.failures_by_reason.items()))
        )
        for dicom_id, status, path in report.failures[:5]:
            console.print(f"  {status}: {dicom_id} ({path})", highlight=False)
    if report.n_pending_elsewhere:
        console.print(
            f"[yellow]{report.n_pending_elsewhere} images of an interrupted run for another "
            "cohort are still pending[/]"
        )


def _print_list() -> None:
    from harness.encode.registry import ENCODERS

    table = Table(title="encoders")
    table.add_column("name")
    table.add_column("what it is")
    table.add_column("example")
    for name, fam in ENCODERS.items():
        table.add_row(name + (":<model>" if fam.takes_model else ""), fam.description, fam.example)
    console.print(fit(table, "name"))
