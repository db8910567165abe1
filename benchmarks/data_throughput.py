"""Data pipeline throughput, each figure beside the same work done by its reference, in one run.

1. `llamapod data prepare` (JSONL file in, shards out, every core) against `tokenizers`'
   `encode_batch_fast` (Rust, every core, texts already in memory): the call prepare makes,
   on the same texts with the same tokenizer, so both do the same tokenizing and prepare
   alone pays for reading, hand-off and writing. Target: prepare >= 0.8x.
2. Scale-out: `llamapod data prepare --slurm` on the tests' namespace Slurm cluster, 1 node
   against 2 nodes with one CPU each (`--workers 1`), over a C4-shaped corpus of .json.gz
   files; the two outputs must be byte-identical. Target: >= 1.7x the tokens/s. Needs root
   and the Slurm daemons (as the tests do); skipped, with the reason, otherwise.
3. The loader (`PackedDataset.next_batch` from memory-mapped shards) against what the
   trainer consumes: one rank's optimizer step of the `small` preset on CPU (one thread),
   same batch and sequence length. Target: data wait < 1% of the step time.

Rounds alternate the two sides of each comparison and the best of each is shown, so a load
spike from other work on the machine hits one round, not the figure.

    python benchmarks/data_throughput.py [--mb 24] [--scale-mb 24] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

SCALE_FILES = 16
# Parts (the unit nodes claim) are about a shard of input each: 1 MB gives each node a
# dozen of them to balance over, as C4's 1,024 files do on a real cluster.
SCALE_SHARD_MB = 1


def corpus_texts(megabytes: float) -> list[str]:
    """The default corpus (stdlib sources) repeated up to ``megabytes``."""
    from llamapod.data.default import default_corpus

    base = list(default_corpus().texts)
    texts: list[str] = []
    size = 0
    while size < megabytes * 1e6:
        for text in base:
            texts.append(text)
            size += len(text)
            if size >= megabytes * 1e6:
                break
    return texts


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def write_c4_layout(folder: Path, texts: list[str], files: int) -> Path:
    """``c4-train.0000k-of-0000n.json.gz`` files, as C4 is downloaded."""
    folder.mkdir(parents=True, exist_ok=True)
    per_file = -(-len(texts) // files)
    for number in range(files):
        with gzip.open(folder / f"c4-train.{number:05d}-of-{files:05d}.json.gz", "wt", compresslevel=1) as handle:
            for text in texts[number * per_file:(number + 1) * per_file]:
                handle.write(json.dumps({"text": text, "url": "https://example.org"}) + "\n")
    return folder


# ---- 1. prepare against encode_batch_fast ------------------------------------------------


def bench_encode_batch_fast(tokenizer_json: Path, texts: list[str]) -> tuple[int, float]:
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(tokenizer_json))
    raw.encode_special_tokens = True  # as llamapod encodes: special-token spellings are text
    started = time.perf_counter()
    encodings = raw.encode_batch_fast(texts, add_special_tokens=False)
    tokens = sum(len(e.ids) for e in encodings)  # the ids as Python lists, as prepare receives them
    return tokens, time.perf_counter() - started


def bench_prepare(corpus: Path, out: Path, tokenizer) -> tuple[int, float]:
    from llamapod.data.prepare import cpu_count, prepare

    started = time.perf_counter()
    index = prepare(str(corpus), out, tokenizer=tokenizer, workers=cpu_count())
    elapsed = time.perf_counter() - started
    wrappers = index["num_documents"] * (2 if tokenizer.add_bos else 1)
    return index["num_tokens"] - wrappers, elapsed


def compare_prepare(tmp: Path, megabytes: float, repeat: int, tokenizer) -> Path:
    from llamapod.data.default import default_tokenizer_path
    from llamapod.data.prepare import cpu_count

    texts = corpus_texts(megabytes)
    corpus = write_jsonl(tmp / "corpus.jsonl", texts)
    print(f"1. prepare vs encode_batch_fast: {sum(map(len, texts)) / 1e6:.1f} MB of Python source, "
          f"{len(texts)} documents, {cpu_count()} cores, tokenizer {tokenizer.name}")
    fast_s = ours_s = float("inf")
    for round_number in range(repeat):
        fast_tokens, seconds = bench_encode_batch_fast(default_tokenizer_path(), texts)
        fast_s = min(fast_s, seconds)
        our_tokens, seconds = bench_prepare(corpus, tmp / f"shards-{round_number}", tokenizer)
        ours_s = min(ours_s, seconds)
    if our_tokens != fast_tokens:
        print(f"   warning: token counts differ: prepare {our_tokens:,} vs encode_batch_fast {fast_tokens:,}")
    fast_rate, our_rate = fast_tokens / fast_s, our_tokens / ours_s
    print(f"   tokenizers encode_batch_fast (all cores, in memory) : {fast_rate:12,.0f} tokens/s  "
          f"({fast_tokens:,} tokens in {fast_s:.2f} s)")
    print(f"   llamapod data prepare (all cores, file to shards)   : {our_rate:12,.0f} tokens/s  "
          f"({our_tokens:,} tokens in {ours_s:.2f} s)")
    print(f"   prepare / encode_batch_fast                          : {our_rate / fast_rate:12.2f}x  (target >= 0.8x)")
    return tmp / "shards-0"


# ---- 2. one node against two -------------------------------------------------------------


def scale_out_unavailable() -> str | None:
    from fixtures.netns import namespaces_available
    from fixtures.slurm import _skip_reason

    return _skip_reason() or namespaces_available()


def run_prepare_job(cluster, corpus: Path, out: Path, nodes: int, runs: Path) -> float:
    """Submit `data prepare --slurm` on ``nodes`` nodes (one worker each); seconds until it ended."""
    from llamapod.cli.data_jobs import prepare_with_slurm
    from llamapod.slurm.jobs import SlurmJobs
    from llamapod.slurm.prepare_render import PrepareRequest

    request = PrepareRequest(source=str(corpus), out=str(out), workers=1, shard_mb=SCALE_SHARD_MB)
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the job id the command prints
        job_id = prepare_with_slurm(request, config_path=None, dry_run=False, shell=cluster.shell(),
                                    slurm_overrides={"nodes": nodes, "job_name": out.name, "exclusive": False,
                                                     "output_dir": str(runs)})
    jobs = SlurmJobs(cluster.shell(), poll_interval_s=0.05)
    job = jobs.wait(job_id, timeout=3600)
    elapsed = time.perf_counter() - started
    if job.state != "COMPLETED":
        raise SystemExit(f"job {job_id} ended {job.state}:\n{jobs.log_text(job_id)}")
    return elapsed


def _encode_alone(args: tuple[str, list[str]]) -> int:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(args[0])
    return sum(len(e.ids) for e in raw.encode_batch_fast(args[1], add_special_tokens=False))


def machine_ceiling(texts: list[str]) -> float:
    """How much faster two single-threaded tokenizer processes are than one on this machine
    right now (other work on a shared machine lowers it): the most 2 nodes can gain here."""
    import multiprocessing

    from llamapod.data.default import default_tokenizer_path

    path = str(default_tokenizer_path())
    sample = texts[: max(2, len(texts) // 4)]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_encode_alone, [(path, sample[:2])] * 2)   # start both workers first
        started = time.perf_counter()
        pool.map(_encode_alone, [(path, sample)])
        one = time.perf_counter() - started
        started = time.perf_counter()
        pool.map(_encode_alone, [(path, sample[0::2]), (path, sample[1::2])], chunksize=1)
        two = time.perf_counter() - started
    return one / two


def tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def compare_scale_out(tmp: Path, megabytes: float, repeat: int, tokenizer) -> None:
    reason = scale_out_unavailable()
    if reason:
        print(f"2. scale-out: skipped ({reason})")
        return
    from fixtures.netns import NetnsNetwork
    from fixtures.slurm import _start_two_nodes

    from llamapod.cli import ui

    texts = corpus_texts(megabytes)
    corpus = write_c4_layout(tmp / "c4" / "en", texts, files=SCALE_FILES)
    print(f"2. scale-out on the namespace Slurm cluster: {sum(map(len, texts)) / 1e6:.1f} MB of text in "
          f"{SCALE_FILES} .json.gz files, `--workers 1` per node, {SCALE_SHARD_MB} MB shards")
    network = NetnsNetwork()
    ui.configure(quiet=True)
    try:
        cluster = _start_two_nodes(network, tmp / "slurm")
        best = {1: float("inf"), 2: float("inf")}
        ceilings = []
        outputs: dict[int, Path] = {}
        for round_number in range(repeat):
            for nodes in (1, 2):
                out = tmp / f"nodes{nodes}-round{round_number}"
                best[nodes] = min(best[nodes], run_prepare_job(cluster, corpus, out, nodes, tmp / "runs"))
                outputs[nodes] = out
            ceilings.append(machine_ceiling(texts))
    finally:
        ui.configure(quiet=False)
        network.close()
    tokens = json.loads((outputs[1] / "index.json").read_text())["num_tokens"]
    same = tree(outputs[1]) == tree(outputs[2])
    one, two = tokens / best[1], tokens / best[2]
    print(f"   1 node  x 1 CPU : {one:12,.0f} tokens/s  ({tokens:,} tokens, job submitted to ended in {best[1]:.1f} s)")
    print(f"   2 nodes x 1 CPU : {two:12,.0f} tokens/s  ({tokens:,} tokens, job submitted to ended in {best[2]:.1f} s)")
    print(f"   2 nodes / 1 node: {two / one:12.2f}x  (target >= 1.7x); outputs byte-identical: {same}")
    print(f"   machine ceiling : {max(ceilings):12.2f}x  (2 tokenizer processes vs 1 on this machine, measured "
          f"between the jobs: {', '.join(f'{c:.2f}' for c in ceilings)}; < 2 when other work holds a core)")


# ---- 3. the loader against the trainer ------------------------------------------------------


def bench_loader(out: Path, tokenizer, batch: int, seq_len: int, seconds: float = 2.0) -> float:
    from llamapod.data import build_dataset

    data = build_dataset(str(out), tokenizer, seq_len=seq_len, split="train", rank=0, world_size=2, seed=0)
    calls = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        data.next_batch(batch)
        calls += 1
    return calls * batch * seq_len / (time.perf_counter() - started)


def bench_trainer_step(vocab_size: int, batch: int, seq_len: int, steps: int = 6) -> float | None:
    """Tokens/s one rank of the small preset consumes (forward, backward, AdamW) on one thread."""
    try:
        import torch

        from llamapod.train.model import Transformer
        from llamapod.shapes import get_preset
    except ImportError as exc:
        print(f"   trainer not importable ({exc}); loader figure only")
        return None
    torch.set_num_threads(1)
    args = get_preset("small").replace(vocab_size=vocab_size, max_seq_len=seq_len)
    with torch.device("meta"):
        model = Transformer(args)
    model.to_empty(device="cpu")
    model.init_weights(seed=0, buffer_device="cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, vocab_size, (batch, seq_len + 1))
    durations = []
    for step in range(steps + 1):
        started = time.perf_counter()
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first step pays for allocations
            durations.append(time.perf_counter() - started)
    return batch * seq_len / (sum(durations) / len(durations))


def compare_loader(shards: Path, tokenizer, batch: int, seq_len: int) -> None:
    loader_rate = bench_loader(shards, tokenizer, batch, seq_len)
    train_rate = bench_trainer_step(tokenizer.vocab_size, batch, seq_len)
    print(f"3. loader next_batch({batch}) x {seq_len}          : {loader_rate:12,.0f} tokens/s")
    if train_rate is not None:
        print(f"   trainer consumption (small, 1 rank) : {train_rate:12,.0f} tokens/s")
        print(f"   data wait share of a step           : {train_rate / loader_rate:12.3%}   (target < 1%)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=24.0, help="MB of text for prepare vs encode_batch_fast")
    parser.add_argument("--scale-mb", type=float, default=24.0, help="MB of text for the 1-vs-2-node comparison")
    parser.add_argument("--repeat", type=int, default=3, help="alternating rounds; the best of each is shown")
    parser.add_argument("--batch", type=int, default=8, help="sequences per rank per step (the trainer's default)")
    parser.add_argument("--seq-len", type=int, default=256, help="sequence length (the small preset's)")
    parser.add_argument("--skip-scale-out", action="store_true", help="only the one-machine figures")
    options = parser.parse_args()

    from llamapod.data import load_tokenizer

    tokenizer = load_tokenizer()
    with tempfile.TemporaryDirectory(prefix="llamapod-bench-") as name:
        tmp = Path(name)
        os.chmod(tmp, 0o755)
        shards = compare_prepare(tmp, options.mb, options.repeat, tokenizer)
        if not options.skip_scale_out:
            compare_scale_out(tmp, options.scale_mb, max(1, options.repeat - 1), tokenizer)
        compare_loader(shards, tokenizer, options.batch, options.seq_len)
    return 0


if __name__ == "__main__":
    sys.exit(main())
