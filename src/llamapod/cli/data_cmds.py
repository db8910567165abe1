"""``llamapod data prepare`` and ``llamapod data inspect``."""

from __future__ import annotations

from pathlib import Path

import click

from llamapod.cli import ui
from llamapod.cli.params import FiniteFloatRange


@click.group()
def data() -> None:
    """Prepare and inspect pre-tokenized datasets."""


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
              help="stop after about this many tokens (whole shards)")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="tokenizer processes [all cores]")
@click.option("--shard-mb", type=FiniteFloatRange(min=0.001), default=None, help="MB of text per shard [8]")
@click.option("--overwrite", is_flag=True, help="replace a dataset already prepared in --out from another source")
def prepare(source: str, tokenizer_spec: str | None, out: Path, text_field: str | None, txt_document: str | None,
            dataset_config_name: str | None, dataset_split: str | None, streaming: bool | None,
            data_files: tuple[str, ...], max_tokens: int | None,
            workers: int | None, shard_mb: float | None, overwrite: bool) -> None:
    """Tokenize SOURCE once into memory-mapped token shards in --out.

    SOURCE: a .txt/.jsonl/.parquet file, a folder or a quoted glob of them, a folder saved with
    `datasets`, or a Hugging Face dataset name. Interrupted? Run the same command again.
    """
    import time

    from llamapod.data.prepare import DEFAULT_SHARD_CHARS, prepare as run_prepare
    from llamapod.data.tokenizer import load_tokenizer

    started = time.monotonic()
    tokenizer = load_tokenizer(tokenizer_spec)
    ui.step(f"preparing {source} with tokenizer {tokenizer.name} into {out}")
    index = run_prepare(source, out, tokenizer=tokenizer, workers=workers, overwrite=overwrite,
                        shard_chars=int(shard_mb * 1_000_000) if shard_mb else DEFAULT_SHARD_CHARS,
                        text_field=text_field, txt_document=txt_document, dataset_config_name=dataset_config_name,
                        dataset_split=dataset_split, streaming=streaming, max_tokens=max_tokens,
                        data_files=list(data_files) or None)
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
def inspect(directory: Path, tokenizer_spec: str | None, document: int, sample_tokens: int, verify: bool,
            as_json: bool) -> None:
    """Show token counts, documents and a decoded sample of prepared shards."""
    from llamapod.data.inspect import inspect_shards

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
