"""``llamapod sample``: see what a checkpoint learned."""

from __future__ import annotations

import click

from llamapod.cli import ui
from llamapod.cli.params import SEED, FiniteFloatRange


@click.command()
@click.option("--checkpoint", required=True, type=click.Path(path_type=str),
              help="checkpoint folder (its newest complete step) or one step_* folder")
@click.option("--prompt", default="", help="text to continue")
@click.option("--max-new-tokens", "--max_new_tokens", default=200, type=click.IntRange(min=1), show_default=True)
@click.option("--temperature", default=0.8, type=FiniteFloatRange(min=0.0), show_default=True,
              help="0 = always the most likely token")
@click.option("--top-k", "--top_k", default=50, type=click.IntRange(min=0), show_default=True,
              help="sample among the k most likely tokens (0 = all)")
@click.option("--seed", default=0, type=SEED, show_default=True)
def sample(checkpoint: str, prompt: str, max_new_tokens: int, temperature: float, top_k: int, seed: int) -> None:
    """Generate text from a checkpoint."""
    from llamapod.train.sample import generate, load_for_inference

    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise click.BadParameter("is not UTF-8 text (the shell passed bytes of another encoding)",
                                 param_hint="'--prompt'") from None

    with ui.status(f"loading {checkpoint}"):
        model, tokenizer, meta = load_for_inference(checkpoint)
    ui.info(f"step {meta.get('step')} of a {sum(p.numel() for p in model.parameters()):,}-parameter model")
    text = generate(model, tokenizer, prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                    top_k=top_k or None, seed=seed)
    ui.out(prompt + text)
