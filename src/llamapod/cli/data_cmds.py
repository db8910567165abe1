"""``llamapod data prepare`` (here, as a Slurm job, or on a cluster) and ``llamapod data inspect``."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Optional

import click

from llamapod.cli import ui
from llamapod.cli.params import FiniteFloatRange

PROGRESS_INTERVAL_S = 10.0


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def progress_line(status) -> str:
    """The line `llamapod jobs` and `logs` show for a preparation (see slurm/jobs.py)."""
    processes = f" | {status.processes} processes" if status.processes > 1 else ""
    return (f"prepare | {status.parts_done}/{status.parts} parts | {status.tokens:,} tokens | "
            f"{status.tokens_per_s:,.0f} tokens/s | {100 * status.fraction:.0f}% | "
            f"ETA {format_duration(status.eta_s)}{processes}")


class CliReporter:
    """Renders a preparation: a live bar on a terminal, a progress line every
    ``interval`` seconds otherwise (a Slurm job's log); only the job's first task
    prints progress, so N nodes do not print N copies."""

    def __init__(self, interval: float = PROGRESS_INTERVAL_S) -> None:
        self.interval = interval
        self.quiet_progress = os.environ.get("SLURM_PROCID", "0") != "0"
        self._bar: ui.Progress | None = None
        self._last = 0.0

    def __enter__(self) -> "CliReporter":
        if ui.is_tty():
            self._bar = ui.Progress("tokenizing", total=100).__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def note(self, message: str) -> None:
        ui.info(message)

    def warn(self, message: str) -> None:
        ui.warn(message)

    def progress(self, status) -> None:
        if self._bar is not None:
            self._bar.update(round(100 * status.fraction, 1), progress_line(status))
            return
        now = time.monotonic()
        if not status.complete and (self.quiet_progress or now - self._last < self.interval):
            return
        self._last = now
        ui.info(progress_line(status))


@click.group()
def data() -> None:
    """Prepare and inspect pre-tokenized datasets."""


def _source_options(text_field, txt_document, dataset_config_name, dataset_split, streaming, data_files,
                    max_tokens) -> dict[str, Any]:
    return {"text_field": text_field, "txt_document": txt_document, "dataset_config_name": dataset_config_name,
            "dataset_split": dataset_split, "streaming": streaming, "max_tokens": max_tokens,
            "data_files": list(data_files) or None}


@data.command()
@click.argument("source")
@click.option("--tokenizer", "tokenizer_spec", default=None, metavar="T",
              help="tokenizer.json, tokenizer.model (SentencePiece or Llama 3), folder or hub id (default: built-in)")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path), help="output directory")
@click.option("--text-field", "--text_field", "text_field", default=None, help="JSONL/Parquet/dataset column with the text [text]")
@click.option("--txt-document", "--txt_document", "txt_document", type=click.Choice(["file", "paragraph", "line"]),
              default=None, help="what one document is in a .txt file [file]")
@click.option("--dataset-config-name", "--dataset_config_name", "dataset_config_name", default=None,
              help="Hugging Face dataset configuration, e.g. en for allenai/c4")
@click.option("--dataset-split", "--dataset_split", "dataset_split", default=None, help="Hugging Face dataset split [train]")
@click.option("--streaming", is_flag=True, default=None, help="stream a Hugging Face dataset instead of downloading it first")
@click.option("--data-files", "--data_files", "data_files", multiple=True,
              help="files for a datasets builder SOURCE such as json, parquet or text (repeatable)")
@click.option("--max-tokens", "--max_tokens", "max_tokens", type=click.IntRange(min=1), default=None,
              help="stop after about this many tokens (whole shards, the same cut on any number of nodes)")
@click.option("--workers", type=click.IntRange(min=1, max=4096), default=None, help="tokenizer processes [all cores]")
@click.option("--shard-mb", type=FiniteFloatRange(min=0.001), default=None, help="MB of text per shard [8]")
@click.option("--overwrite", is_flag=True, help="replace a dataset already prepared in --out from another source")
@click.option("--run-id", default=None, metavar="ID",
              help="prepare processes started with the same ID share the work (the Slurm job passes its job id)")
@click.option("--slurm", "use_slurm", is_flag=True, help="run as a Slurm job over --nodes nodes (from a login node)")
@click.option("--cluster", default=None, metavar="NAME", help="run as a Slurm job on the HyperPod cluster NAME (from a laptop)")
@click.option("--dry-run", is_flag=True, help="with --slurm/--cluster: write (and show) the job script, submit nothing")
@click.option("--detach", is_flag=True, help="with --slurm/--cluster: return once the job is submitted")
@click.option("--nodes", type=click.IntRange(min=1), default=None, help="with --slurm/--cluster: nodes [1]")
@click.option("--partition", default=None, help="with --slurm/--cluster: partition")
@click.option("--time", "time_limit", default=None, help="with --slurm/--cluster: time limit (e.g. 4:00:00)")
@click.option("--account", default=None, help="with --slurm/--cluster: account")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="llamapod.toml to read [slurm] (and [remote]) from")
def prepare(source: str, tokenizer_spec: str | None, out: Path, text_field: str | None, txt_document: str | None,
            dataset_config_name: str | None, dataset_split: str | None, streaming: bool | None,
            data_files: tuple[str, ...], max_tokens: int | None, workers: int | None, shard_mb: float | None,
            overwrite: bool, run_id: str | None, use_slurm: bool, cluster: str | None, dry_run: bool, detach: bool,
            nodes: int | None, partition: str | None, time_limit: str | None, account: str | None,
            config_path: Path | None) -> None:
    """Tokenize SOURCE once into memory-mapped token shards in --out.

    SOURCE: a .txt/.jsonl/.parquet file (also .json.gz, .jsonl.gz, .jsonl.zst), a folder or a
    quoted glob of them, a folder saved with `datasets`, or a Hugging Face dataset name.
    Interrupted? Run the same command again: finished shards are kept.
    """
    options = _source_options(text_field, txt_document, dataset_config_name, dataset_split, streaming, data_files,
                              max_tokens)
    overrides = {key: value for key, value in (("nodes", nodes), ("partition", partition), ("time", time_limit),
                                               ("account", account)) if value is not None}
    if use_slurm or cluster:
        if run_id:
            raise click.UsageError("--run-id is chosen by the job (its job id); drop it with --slurm or --cluster")
        from llamapod.cli.data_jobs import submit_prepare_job

        submit_prepare_job(source, out, tokenizer_spec=tokenizer_spec, options=options, workers=workers,
                           shard_mb=shard_mb, overwrite=overwrite, cluster=cluster, config_path=config_path,
                           slurm_overrides=overrides, dry_run=dry_run, detach=detach)
        return
    if overrides or dry_run or detach:
        flag = "--dry-run" if dry_run else "--detach" if detach else f"--{next(iter(overrides))}"
        raise click.UsageError(f"{flag} only applies with --slurm or --cluster")
    prepare_here(source, out, tokenizer_spec=tokenizer_spec, options=options, workers=workers, shard_mb=shard_mb,
                 overwrite=overwrite, run_id=run_id)


def prepare_here(source: str, out: Path, *, tokenizer_spec: str | None, options: dict[str, Any],
                 workers: int | None, shard_mb: float | None, overwrite: bool, run_id: str | None) -> None:
    from llamapod.data.prepare import DEFAULT_SHARD_CHARS, cpu_count, prepare as run_prepare
    from llamapod.data.tokenizer import load_tokenizer

    started = time.monotonic()
    tokenizer = load_tokenizer(tokenizer_spec)
    ui.step(f"preparing {source} with tokenizer {tokenizer.name} into {out} "
            f"({workers or cpu_count()} worker process(es){f', run {run_id}' if run_id else ''})")
    with CliReporter() as reporter:
        index = run_prepare(source, out, tokenizer=tokenizer, workers=workers, overwrite=overwrite, run_id=run_id,
                            shard_chars=round(shard_mb * 1_000_000) if shard_mb else DEFAULT_SHARD_CHARS,
                            reporter=reporter, **options)
    if index is None:
        ui.success(f"this process has no part left to prepare; the other processes of run {run_id} "
                   "finish the rest and write the index")
        return
    elapsed = time.monotonic() - started
    ui.success(f"{index['num_tokens']:,} tokens in {index['num_documents']:,} documents, {len(index['shards'])} shard(s) "
               f"({index['num_tokens'] / max(elapsed, 1e-9):,.0f} tokens/s)")
    ui.out(str(out))
    ui.info(f"next: llamapod data inspect {out}   |   llamapod train --dataset {out}"
            + (f" --tokenizer {tokenizer_spec}" if tokenizer_spec else ""))


@data.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--tokenizer", "tokenizer_spec", default=None, metavar="T",
              help="tokenizer to decode with (default: the one recorded in the shards)")
@click.option("--document", "document", type=click.IntRange(min=0), default=0, help="document to decode [0]")
@click.option("--tokens", "sample_tokens", type=click.IntRange(min=1), default=200, help="tokens to decode [200]")
@click.option("--verify", is_flag=True, help="re-check every shard's checksum")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def inspect(directory: Path, tokenizer_spec: Optional[str], document: int, sample_tokens: int, verify: bool,
            as_json: bool) -> None:
    """Show token counts, documents and a decoded sample of prepared shards."""
    from llamapod.data.inspection import inspect_shards

    report = inspect_shards(directory, tokenizer_spec=tokenizer_spec, document=document,
                            sample_tokens=sample_tokens, verify=verify)
    if as_json:
        ui.out_json(report)
        return
    ui.table(["", ""], [
        ("directory", report["directory"]),
        ("tokenizer", f"{report['tokenizer']} (vocabulary {report['vocab_size']:,}, {report['dtype']})"),
        ("source", report["source"]),
        ("shards", f"{report['shards']:,}" + (" (checksums verified)" if verify else "")),
        ("documents", f"{report['documents']:,}"),
        ("tokens", f"{report['tokens']:,}"),
        ("tokens per document", f"mean {report['mean_document_tokens']:,.1f}, max {report['max_document_tokens']:,}"),
        ("size on disk", f"{report['bytes'] / 1e6:,.1f} MB"),
    ])
    ui.out(f"\ndocument {document}, first {len(report['sample_ids'])} tokens:")
    ui.out(report["sample_text"] if report["sample_text"] is not None else " ".join(map(str, report["sample_ids"])))
