"""``llamapod export``: hand a checkpoint to the Hugging Face ecosystem or to one-file tools."""

from __future__ import annotations

from pathlib import Path

import click

from llamapod.cli import ui
from llamapod.errors import ConfigError, DataError


def _parse_size(text: str) -> int:
    units = {"KB": 1000, "MB": 1000**2, "GB": 1000**3, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}
    upper = text.strip().upper()
    for unit, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if upper.endswith(unit):
            number = upper[: -len(unit)].strip()
            break
    else:
        number, factor = upper, 1
    try:
        value = int(float(number) * factor)
    except ValueError:
        raise ConfigError(f"--max-shard-size {text!r} is not a size", hint="write it like 2GB, 500MB or 5GiB") from None
    if value <= 0:
        raise ConfigError(f"--max-shard-size must be positive (got {text})", hint="write it like 2GB")
    return value


def _tokenizer_for(meta: dict):
    """The run's tokenizer, when it can still be loaded and is the one the model was trained with."""
    from llamapod.data import load_tokenizer

    spec = meta.get("tokenizer_spec")
    try:
        tokenizer = load_tokenizer(spec)
    except (DataError, OSError) as exc:
        ui.warn(f"tokenizer {spec or 'default'} cannot be loaded ({exc}): exporting without tokenizer files")
        return None
    if meta.get("tokenizer") and tokenizer.name != meta["tokenizer"]:
        ui.warn(f"tokenizer {spec or 'default'} is now {tokenizer.name!r}, but the model was trained with "
                f"{meta['tokenizer']!r}: exporting without tokenizer files")
        return None
    return tokenizer


@click.command(name="export")
@click.option("--checkpoint", "checkpoint", required=True, type=click.Path(path_type=Path),
              help="A step_<N> folder, or a checkpoint folder (its newest complete step is used).")
@click.option("--hf", "hf_out", type=click.Path(path_type=Path),
              help="Write a Hugging Face Llama folder (config.json, model*.safetensors, tokenizer files).")
@click.option("--consolidated", "consolidated_out", type=click.Path(path_type=Path),
              help="Write one torch.save file holding the full model state, its args and the checkpoint meta.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32",
              show_default=True, help="Precision of the exported Hugging Face weights.")
@click.option("--max-shard-size", "max_shard_size", default="2GB", show_default=True,
              help="Largest safetensors file to write (Hugging Face export).")
@click.option("--force", is_flag=True,
              help="Replace an existing export (a Hugging Face folder's weights, index and config; other files "
                   "there are kept).")
def export(checkpoint: Path, hf_out: Path | None, consolidated_out: Path | None, dtype: str,
           max_shard_size: str, force: bool) -> None:
    """Export a checkpoint to a Hugging Face folder (--hf OUT) or one file (--consolidated OUT.pt)."""
    if hf_out is None and consolidated_out is None:
        raise ConfigError("nothing to export: pass --hf OUT_DIR and/or --consolidated OUT.pt",
                          hint="e.g. llamapod export --checkpoint runs/x/checkpoints --hf runs/x/hf")
    from llamapod.train.checkpoint import resolve_checkpoint, validate_checkpoint

    step_dir = resolve_checkpoint(checkpoint)
    meta = validate_checkpoint(step_dir)
    if hf_out is not None:
        from llamapod.train.hf_export import export_hf

        shard_bytes = _parse_size(max_shard_size)
        ui.step(f"exporting {step_dir} (step {meta.get('step')}) to Hugging Face format in {hf_out}")
        files = export_hf(step_dir, hf_out, dtype=dtype, max_shard_bytes=shard_bytes, tokenizer=_tokenizer_for(meta),
                          force=force)
        ui.success(f"wrote {len(files)} files to {hf_out}")
        ui.out(str(hf_out))
        ui.info(f"  load it with: LlamaForCausalLM.from_pretrained({str(hf_out)!r})")
    if consolidated_out is not None:
        from llamapod.train.hf_export import export_consolidated

        ui.step(f"exporting {step_dir} (step {meta.get('step')}) to {consolidated_out}")
        export_consolidated(step_dir, consolidated_out, force=force)
        ui.success(f"wrote {consolidated_out}")
        ui.out(str(consolidated_out))

