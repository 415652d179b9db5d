# make bench-train   (or: .venv/bin/python bench/train_bench.py [--steps 30] [--dev 200])
"""Training throughput, memory and accuracy: TRL SFTTrainer + peft LoRA against peftops.

One after the other, on the same pinned Gemma 3 270M snapshot, the same prepared SST-2 splits,
batch size, step count and hyperparameters:

  (a) peer:    trl.SFTTrainer + peft LoRA (r=16, alpha=32, dropout 0.05, all linear layers),
               prompt-completion data, ``completion_only_loss=True`` — what a user would pick;
  (b) peftops: the same LoRA through ``peftops.training.loop.train``;
  (c) full:    full fine-tuning through ``peftops.training.loop.train`` (the memory reference).

Each contender runs in its own process, so neither its peak memory nor its allocator state leaks
into the next. Every contender gets the same number of torch threads (``--threads``, default 1) and
the same memory strategy: activations are recomputed in the backward pass, TRL's default
(``gradient_checkpointing=True``) and peftops' ``train.activation_checkpointing`` (``--no-checkpointing``
turns it off in both). Precision is fp32 in both on CPU (TRL's bf16 default is switched off). Throughput counts the training loop only (model load and data tokenisation are
excluded); peak memory is the process's resident set sampled during the loop (CUDA max-allocated on
a GPU). Every resulting model is scored by the same evaluator (``peftops.evaluation.evaluate.evaluate``) on the
same dev examples. With 30 steps a run's dev accuracy depends strongly on the seed (LoRA init, data
order, dropout) for both contenders, so each LoRA contender runs once per seed (``--seeds``, default
0,1,2; peer and peftops interleaved) and the JSON reports means over seeds, with every run listed.
A table goes to stdout and, as the last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from peftops.pipeline.env import apply_defaults  # noqa: E402

apply_defaults()

LORA = {"lr": 5e-4, "r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
FULL = {"lr": 2e-5}


def _params(args):
    from peftops.config import DataConfig, PipelineParams, TrainConfig

    return PipelineParams(data=DataConfig(task="sst2", train_size=args.train, dev_size=args.dev),
                          train=TrainConfig(steps=args.steps, batch_size=args.batch, warmup_steps=args.warmup,
                                            schedule="linear", max_grad_norm=1.0, weight_decay=0.0, seed=args.seed,
                                            activation_checkpointing=args.checkpointing))


def _data_dir(args) -> Path:
    from peftops.config import state_home

    return state_home(args.home) / "bench" / f"sst2-{args.train}-{args.dev}"


def prepare_once(args) -> None:
    """Parent: pin the snapshot (built once) and prepare SST-2 into a directory of the bench's own."""
    from peftops.model.snapshot import load_tokenizer
    from peftops.data.prepared import prepare
    from peftops.stages import stage_base

    params = _params(args)
    snap = stage_base(params, args.home)
    prepare(params.data, load_tokenizer(snap), _data_dir(args))


def _setup(args):
    """Child: the verified snapshot and the prepared splits."""
    from peftops.model.snapshot import open_snapshot
    from peftops.stages import Layout

    params = _params(args)
    snap = open_snapshot(Layout.of(args.home).base(params.base.name), params.base.expected_digest)
    return params, snap, _data_dir(args) / "train.json", _data_dir(args) / "dev.json"


def _score(model, dev_path, pad_id):
    from peftops.data.prepared import load_prepared
    from peftops.evaluation.evaluate import evaluate

    return evaluate(model, load_prepared(dev_path), pad_id=pad_id, batch_size=16).score


def run_peftops(args, method: str) -> dict:
    """Child: train ``method`` with the peftops loop, then score it."""
    import torch

    from peftops.model.snapshot import load_model, pad_token_id
    from peftops.data.prepared import load_prepared
    from peftops.methods import get_method, make_config
    from peftops.model.params import count_params
from peftops.training.loop import train

    params, snap, train_path, dev_path = _setup(args)
    pad_id = pad_token_id(snap)  # the data is tokenized already: no tokenizer in this process
    split = load_prepared(train_path)
    base = load_model(snap)
    base_params = count_params(base)
    m = get_method(method)
    cfg = make_config(method, LORA if method == "lora" else FULL)
    torch.manual_seed(args.seed)
    model = m.apply(base, cfg)
    with tempfile.TemporaryDirectory(prefix=f"bench-{method}-") as tmp:
        cpu0 = time.process_time()
        r = train(model, m, cfg, split, params.train, Path(tmp), pad_id=pad_id, base_params=base_params,
                  progress=False)
        cpu = time.process_time() - cpu0
    acc = _score(model, dev_path, pad_id)
    return {"examples_per_s": r.examples_per_s, "peak_mb": r.peak_memory_mb, "train_s": r.train_time_s, "cpu_s": cpu,
            "dev_acc": acc, "final_loss": r.losses[-1], "trainable": r.trainable_params,
            "tokens_per_s": r.tokens_per_s, "memory_kind": r.memory_kind}


def run_peer(args) -> dict:
    """Child: trl.SFTTrainer + peft LoRA on the same data and hyperparameters, then our evaluator."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from peftops.model.snapshot import load_model, load_tokenizer
    from peftops.data.prepared import load_prepared
    from peftops.training.memory import PeakMemory
    from peftops.methods.lora.config import GEMMA3_LINEAR

    params, snap, train_path, dev_path = _setup(args)
    tok = load_tokenizer(snap)
    tok.padding_side = "right"  # TRL's collator pads on the right
    split = load_prepared(train_path)
    rows = [{"prompt": tok.decode(ids, skip_special_tokens=True), "completion": split.verbalizers[y]}
            for ids, y in zip(split.input_ids, split.labels)]
    model = load_model(snap)
    torch.manual_seed(args.seed)
    t = params.train
    sft = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-peer-"), per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=1, max_steps=t.steps, learning_rate=LORA["lr"], lr_scheduler_type="linear",
        warmup_steps=t.warmup_steps, max_grad_norm=t.max_grad_norm, weight_decay=t.weight_decay,
        completion_only_loss=True, report_to=[], use_cpu=not torch.cuda.is_available(), save_strategy="no",
        logging_steps=max(1, t.steps // 3), dataloader_num_workers=0, seed=args.seed, bf16=torch.cuda.is_available(),
        disable_tqdm=True, gradient_checkpointing=args.checkpointing,
    )
    peft_cfg = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                          target_modules=list(GEMMA3_LINEAR), bias="none", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=sft, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         peft_config=peft_cfg)
    with PeakMemory("cuda" if torch.cuda.is_available() else "cpu") as mem:
        t0, cpu0 = time.perf_counter(), time.process_time()
        out = trainer.train()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    peft_model = trainer.model
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    acc = _score(peft_model.eval(), dev_path, tok.pad_token_id)
    return {"examples_per_s": t.steps * t.batch_size / wall, "peak_mb": mem.peak_mb, "train_s": wall, "cpu_s": cpu,
            "dev_acc": acc, "final_loss": float(out.training_loss), "trainable": trainable,
            "memory_kind": mem.kind}


def child(args) -> None:
    """Run one contender and print its result as JSON on the last line."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.run == "peer":
        res = run_peer(args)
    else:
        res = run_peftops(args, args.run)
    res["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["threads"] = torch.get_num_threads()
    print(json.dumps(res), flush=True)


def spawn(args, who: str) -> dict:
    """Run ``who`` in a fresh process and parse its JSON line."""
    cmd = [sys.executable, __file__, "--run", who, "--steps", str(args.steps), "--batch", str(args.batch),
           "--dev", str(args.dev), "--train", str(args.train), "--warmup", str(args.warmup),
           "--threads", str(args.threads), "--seed", str(args.seed)] + ([] if args.checkpointing else ["--no-checkpointing"])
    if args.home:
        cmd += ["--home", args.home]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"{who} failed (exit {out.returncode})")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_s"] = time.perf_counter() - t0
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--train", type=int, default=480, help="train subset size")
    ap.add_argument("--dev", type=int, default=200, help="dev examples scored")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for every contender (0 = torch's default, one per core); 1 by default "
                         "so that other processes on the machine do not stall OpenMP's thread team")
    ap.add_argument("--no-checkpointing", dest="checkpointing", action="store_false",
                    help="keep activations instead of recomputing them, in every contender (TRL's default "
                         "and this bench's default is to recompute)")
    ap.add_argument("--seeds", default="0,1,2",
                    help="comma-separated seeds; peer and peftops LoRA run once per seed (init, data order, "
                         "dropout) and the figures are means over seeds (peaks: the largest); FFT runs once")
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)  # a child's seed
    ap.add_argument("--home", default=None, help="state directory (default: $PEFTOPS_HOME or ./.peftops)")
    ap.add_argument("--run", choices=["peer", "lora", "full"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        return child(args)

    prepare_once(args)
    seeds = [int(x) for x in args.seeds.split(",")]
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {"peer": [], "lora": []}
    for seed in seeds:  # interleaved, so drifting load hits both contenders alike
        for who in ("peer", "lora"):
            runs[who].append(spawn(argparse.Namespace(**{**vars(args), "seed": seed}), who))
    full = spawn(argparse.Namespace(**{**vars(args), "seed": seeds[0]}), "full")
    load_after = os.getloadavg()
    names = {"peer": "TRL SFTTrainer + peft LoRA", "lora": "peftops LoRA", "full": "peftops FFT"}
    print(f"\nSST-2, batch {args.batch}, {args.steps} steps, dev {args.dev}; LoRA r=16 alpha=32 all linear, "
          f"lr {LORA['lr']}, FFT lr {FULL['lr']}; seeds {seeds}; {os.cpu_count()} CPUs, "
          f"load {load_before[0]:.2f} -> {load_after[0]:.2f}")
    print(f"{'contender':28} {'seed':>4} {'examples/s':>10} {'peak MB':>9} {'dev acc':>8} {'train s':>8} "
          f"{'CPU s':>8} {'final loss':>10}")
    rows = [(who, seed, r) for who in ("peer", "lora") for seed, r in zip(seeds, runs[who])]
    for who, seed, r in rows + [("full", seeds[0], full)]:
        print(f"{names[who]:28} {seed:4d} {r['examples_per_s']:10.2f} {r['peak_mb']:9.0f} {r['dev_acc']:8.3f} "
              f"{r['train_s']:8.1f} {r['cpu_s']:8.1f} {r['final_loss']:10.4f}")

    def mean(who: str, key: str) -> float:
        return statistics.fmean(r[key] for r in runs[who])

    def peak(who: str) -> float:  # the largest of the runs' peaks: what the machine must hold
        return max(r["peak_mb"] for r in runs[who])

    ours_ex, peer_ex = mean("lora", "examples_per_s"), mean("peer", "examples_per_s")
    summary = {
        "peer_examples_per_s": round(peer_ex, 3),
        "peftops_examples_per_s": round(ours_ex, 3),
        "speedup": round(ours_ex / peer_ex, 2),
        "peer_peak_mb": round(peak("peer")),
        "peftops_peak_mb": round(peak("lora")),
        "memory_ratio": round(peak("lora") / peak("peer"), 3),
        "peer_dev_acc": round(mean("peer", "dev_acc"), 4),
        "peftops_dev_acc": round(mean("lora", "dev_acc"), 4),
        "full_examples_per_s": round(full["examples_per_s"], 3),
        "full_peak_mb": round(full["peak_mb"]),
        "full_dev_acc": round(full["dev_acc"], 4),
        "lora_vs_full_memory_ratio": round(peak("lora") / full["peak_mb"], 3),
        "cpu_speedup": round(mean("peer", "cpu_s") / mean("lora", "cpu_s"), 2),
        "seeds": seeds,
        "per_seed": {who: [{"seed": sd, "examples_per_s": round(r["examples_per_s"], 3),
                            "peak_mb": round(r["peak_mb"]), "dev_acc": r["dev_acc"],
                            "cpu_s": round(r["cpu_s"], 1)} for sd, r in zip(seeds, runs[who])]
                     for who in ("peer", "lora")},
        "steps": args.steps, "batch_size": args.batch, "dev_examples": args.dev,
        "threads": runs["lora"][0]["threads"], "activation_checkpointing": args.checkpointing,
        "memory_kind": runs["lora"][0]["memory_kind"], "load_avg_before": round(load_before[0], 2),
        "load_avg_after": round(load_after[0], 2),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
