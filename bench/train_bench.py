# make bench-train   (or: .venv/bin/python bench/train_bench.py [--steps 30] [--dev 200] [--smoke])
"""Training throughput, memory and accuracy: TRL SFTTrainer + peft LoRA against peftops, in fp32 and bf16.

One after the other, on the same pinned Gemma 3 270M snapshot, the same prepared SST-2 splits,
batch size, step count and hyperparameters:

  (a) peer:    trl.SFTTrainer + peft LoRA (r=16, alpha=32, dropout 0.05, all linear layers),
               prompt-completion data, ``completion_only_loss=True`` — what a user would pick; in
               fp32 (``bf16=False``) and with ``bf16=True`` (CPU autocast: its best CPU configuration);
  (b) peftops: the same LoRA through ``peftops.training.loop.train``, ``train.precision`` fp32 and bf16
               (frozen base in bf16, LoRA weights and AdamW state in fp32, products in bf16);
  (c) full:    full fine-tuning through ``peftops.training.loop.train`` (the memory reference), fp32
               and bf16 (fp32 master weights, bf16 products).

Each contender runs in its own process, so neither its peak memory nor its allocator state leaks
into the next. Every contender gets the same number of torch threads (``--threads``, default 1) and
the same memory strategy: activations are recomputed in the backward pass, TRL's default
(``gradient_checkpointing=True``) and peftops' ``train.activation_checkpointing`` (``--no-checkpointing``
turns it off in both). Throughput counts the training loop only (model load and data tokenisation are
excluded); peak memory is the process's resident set sampled during the loop (CUDA max-allocated on
a GPU). Every resulting model is scored by the same evaluator (``peftops.evaluation.evaluate.evaluate``) on the
same dev examples. With 30 steps a run's dev accuracy depends strongly on the seed (LoRA init, data
order, dropout) for both contenders, so each LoRA contender runs once per seed (``--seeds``, default
0,1,2; peer and peftops interleaved) and the JSON reports means over seeds, with every run listed.
Evaluation speed is the evaluator's examples/s on the dev split in the run's precision. The LoRA
contenders (peer and peftops, both precisions) run once per seed, interleaved; FFT runs once per
precision.

Generation (``mrpc_paraphrase``: rewrite a sentence, loss on the response only, TRL's own use
case): the peer, ``SFTTrainer`` + peft LoRA with ``completion_only_loss``, gets the very token ids
peftops trains on (prompt, then response + eos, as ``input_ids`` + ``completion_mask``), in fp32
and bf16 on the first seed and then only in the faster of the two (its best CPU configuration;
a generation run of the peer costs ~10 minutes of one core here); peftops LoRA runs in its default precision (bf16). Same hyperparameters, steps and
seeds; both are scored by the same greedy decoder on ``--gen-dev`` dev prompts (ROUGE-L, token
F1). The ``gen_*`` figures compare peftops with the peer's faster configuration. ``--only`` runs
one of the two halves; ``--only mrpc`` (not part of ``all``) runs peftops LoRA fp32 against bf16 on
MRPC, seeds interleaved, for the F1 half of the accuracy target. ``--smoke`` is a short run to prove the bench works (4 steps, one seed, 16 dev
examples): its figures mean nothing. A table goes to stdout and, as the last line, one JSON object.
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


CLS_TASK, GEN_TASK = "sst2", "mrpc_paraphrase"
CONTENDERS = {  # name -> (label, runner, precision, task)
    "peer": ("TRL SFTTrainer + peft LoRA", "peer", "fp32", CLS_TASK),
    "peer-bf16": ("TRL SFTTrainer + peft LoRA bf16", "peer", "bf16", CLS_TASK),
    "lora": ("peftops LoRA fp32", "lora", "fp32", CLS_TASK),
    "lora-bf16": ("peftops LoRA bf16", "lora", "bf16", CLS_TASK),
    "full": ("peftops FFT fp32", "full", "fp32", CLS_TASK),
    "full-bf16": ("peftops FFT bf16", "full", "bf16", CLS_TASK),
    # generation (prompt -> response, loss on the response): TRL's own use case
    "gen-peer": ("TRL SFTTrainer + peft LoRA (gen)", "peer", "fp32", GEN_TASK),
    "gen-peer-bf16": ("TRL SFTTrainer + peft LoRA bf16 (gen)", "peer", "bf16", GEN_TASK),
    "gen-lora-bf16": ("peftops LoRA bf16 (gen)", "lora", "bf16", GEN_TASK),
    # MRPC (paraphrase, scored by F1): the accuracy target's second task, peftops in both precisions
    "mrpc-lora": ("peftops LoRA fp32 (MRPC)", "lora", "fp32", "mrpc"),
    "mrpc-lora-bf16": ("peftops LoRA bf16 (MRPC)", "lora", "bf16", "mrpc"),
}
CLASSIFICATION = ("peer", "peer-bf16", "lora", "lora-bf16", "full", "full-bf16")
GENERATION = ("gen-peer", "gen-peer-bf16", "gen-lora-bf16")
MRPC = ("mrpc-lora", "mrpc-lora-bf16")


def _params(args, precision: str = "fp32", task: str = CLS_TASK):
    from peftops.config import DataConfig, PipelineParams, TrainConfig

    dev = args.gen_dev if task == GEN_TASK else args.dev
    return PipelineParams(data=DataConfig(task=task, train_size=args.train, dev_size=dev),
                          train=TrainConfig(steps=args.steps, batch_size=args.batch, warmup_steps=args.warmup,
                                            schedule="linear", max_grad_norm=1.0, weight_decay=0.0, seed=args.seed,
                                            activation_checkpointing=args.checkpointing, precision=precision))


def _data_dir(args, task: str = CLS_TASK) -> Path:
    from peftops.config import state_home

    dev = args.gen_dev if task == GEN_TASK else args.dev
    return state_home(args.home) / "bench" / f"{task}-{args.train}-{dev}"


def prepare_once(args, tasks: tuple[str, ...]) -> None:
    """Parent: pin the snapshot (built once) and prepare each task into a directory of the bench's own."""
    from peftops.model.snapshot import load_tokenizer
    from peftops.data.prepared import prepare
    from peftops.stages import stage_base

    snap = stage_base(_params(args), args.home)
    for task in tasks:
        params = _params(args, task=task)
        prepare(params.data, load_tokenizer(snap), _data_dir(args, task))


def _setup(args, precision: str = "fp32"):
    """Child: the verified snapshot and the prepared splits of the child's task."""
    from peftops.model.snapshot import open_snapshot
    from peftops.stages import Layout

    params = _params(args, precision, args.task)
    snap = open_snapshot(Layout.of(args.home).base(params.base.name), params.base.expected_digest)
    return params, snap, _data_dir(args, args.task) / "train.json", _data_dir(args, args.task) / "dev.json"


def _score(model, dev_path, pad_id, precision: str = "fp32", tokenizer=None):
    """The evaluator's result on the dev split, in ``precision`` (a resolved one); a generation
    split is decoded greedily with ``tokenizer``."""
    from peftops.data.prepared import load_prepared
    from peftops.evaluation.evaluate import evaluate

    return evaluate(model, load_prepared(dev_path), pad_id=pad_id, batch_size=16, precision=precision,
                    tokenizer=tokenizer)


def _scores(ev) -> dict:
    """The evaluation figures a contender reports: accuracy (classification) or ROUGE-L and the
    other generation metrics."""
    out = {"dev_acc": ev.score if ev.metric == "accuracy" else ev.metrics.get("accuracy"),
           "eval_examples_per_s": ev.examples_per_s}
    if ev.metric == "f1":
        out["dev_f1"] = ev.score
    if "rougeL" in ev.metrics:
        out.update({"rouge_l": ev.metrics["rougeL"], "token_f1": ev.metrics.get("token_f1"),
                    "exact_match": ev.metrics.get("exact_match"), "dev_loss": ev.metrics.get("dev_loss")})
    return out


def run_peftops(args, method: str, precision: str) -> dict:
    """Child: train ``method`` with the peftops loop in ``precision``, then score it in the same."""
    import torch

    from peftops.data.prepared import load_prepared
    from peftops.methods import get_method, make_config
    from peftops.model.params import count_params
    from peftops.model.snapshot import load_model, pad_token_id
    from peftops.training.loop import train
    from peftops.training.precision import storage_dtype

    params, snap, train_path, dev_path = _setup(args, precision)
    pad_id = pad_token_id(snap)  # the data is tokenized already: the tokenizer only decodes outputs
    split = load_prepared(train_path)
    m = get_method(method)
    base = load_model(snap, dtype=storage_dtype(precision, m))
    base_params = count_params(base)
    cfg = make_config(method, LORA if method == "lora" else FULL)
    torch.manual_seed(args.seed)
    model = m.apply(base, cfg)
    with tempfile.TemporaryDirectory(prefix=f"bench-{method}-") as tmp:
        cpu0 = time.process_time()
        r = train(model, m, cfg, split, params.train, Path(tmp), pad_id=pad_id, base_params=base_params,
                  progress=False)
        cpu = time.process_time() - cpu0
    tok = None
    if split.generative:
        from peftops.model.snapshot import load_tokenizer

        tok = load_tokenizer(snap)
    ev = _score(model, dev_path, pad_id, r.precision, tok)
    return {"examples_per_s": r.examples_per_s, "peak_mb": r.peak_memory_mb, "train_s": r.train_time_s, "cpu_s": cpu,
            **_scores(ev), "final_loss": r.losses[-1],
            "trainable": r.trainable_params, "tokens_per_s": r.tokens_per_s, "memory_kind": r.memory_kind,
            "precision": r.precision}


def run_peer(args, precision: str) -> dict:
    """Child: trl.SFTTrainer + peft LoRA on the same data and hyperparameters (``bf16=True`` for
    bf16: TRL's CPU autocast), then our evaluator (fp32: the peer's model is an fp32 model)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from peftops.model.snapshot import load_model, load_tokenizer
    from peftops.data.prepared import load_prepared
    from peftops.training.memory import PeakMemory
    from peftops.methods.base import GEMMA3_LINEAR

    params, snap, train_path, dev_path = _setup(args)
    tok = load_tokenizer(snap)
    tok.padding_side = "right"  # TRL's collator pads on the right
    split = load_prepared(train_path)
    if split.generative:  # the very tokens peftops trains on: prompt, then response + eos
        rows = [{"input_ids": p + r, "completion_mask": [0] * len(p) + [1] * len(r)}
                for p, r in zip(split.input_ids, split.response_ids)]
    else:
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
        logging_steps=max(1, t.steps // 3), dataloader_num_workers=0, seed=args.seed, bf16=precision == "bf16",
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
    ev = _score(peft_model.eval(), dev_path, tok.pad_token_id, tokenizer=tok)
    return {"examples_per_s": t.steps * t.batch_size / wall, "peak_mb": mem.peak_mb, "train_s": wall, "cpu_s": cpu,
            **_scores(ev), "final_loss": float(out.training_loss),
            "trainable": trainable, "memory_kind": mem.kind, "precision": precision}


def child(args) -> None:
    """Run one contender and print its result as JSON on the last line."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    _, runner, precision, args.task = CONTENDERS[args.run]
    res = run_peer(args, precision) if runner == "peer" else run_peftops(args, runner, precision)
    res["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["threads"] = torch.get_num_threads()
    print(json.dumps(res), flush=True)


def spawn(args, who: str) -> dict:
    """Run ``who`` in a fresh process and parse its JSON line."""
    cmd = [sys.executable, __file__, "--run", who, "--steps", str(args.steps), "--batch", str(args.batch),
           "--dev", str(args.dev), "--gen-dev", str(args.gen_dev), "--train", str(args.train), "--warmup", str(args.warmup),
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
    ap.add_argument("--dev", type=int, default=200, help="dev examples scored (classification)")
    ap.add_argument("--gen-dev", type=int, default=50,
                    help="dev prompts generated and scored (generation: greedy, up to the task's max_new_tokens)")
    ap.add_argument("--only", choices=("all", "classification", "generation", "mrpc"), default="all",
                    help="run only the SST-2 classification contenders or only the generation ones; mrpc: "
                         "peftops LoRA fp32 against bf16 on MRPC (F1), seeds interleaved (not part of all)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for every contender (0 = torch's default, one per core); 1 by default "
                         "so that other processes on the machine do not stall OpenMP's thread team")
    ap.add_argument("--no-checkpointing", dest="checkpointing", action="store_false",
                    help="keep activations instead of recomputing them, in every contender (TRL's default "
                         "and this bench's default is to recompute)")
    ap.add_argument("--seeds", default="0,1,2",
                    help="comma-separated seeds; the LoRA contenders run once per seed (init, data order, "
                         "dropout) and the figures are means over seeds (peaks: the largest); FFT runs once")
    ap.add_argument("--smoke", action="store_true",
                    help="prove the bench runs: 4 steps, 1 warmup step, seed 0, 16 dev examples (figures meaningless)")
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)  # a child's seed
    ap.add_argument("--home", default=None, help="state directory (default: $PEFTOPS_HOME or ./.peftops)")
    ap.add_argument("--run", choices=sorted(CONTENDERS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        return child(args)
    if args.smoke:
        args.steps, args.warmup, args.seeds, args.dev, args.gen_dev = 4, 1, "0", 16, 8

    cls, gen = args.only in ("all", "classification"), args.only in ("all", "generation")
    seeds = [int(x) for x in args.seeds.split(",")]
    if args.only == "mrpc":
        return mrpc_accuracy(args, seeds)
    prepare_once(args, (CLS_TASK,) * cls + (GEN_TASK,) * gen)
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {who: [] for who in CONTENDERS}
    peer_gen: tuple[str, ...] = ("gen-peer", "gen-peer-bf16")  # both on the first seed, then the faster
    for seed in seeds:  # interleaved, so drifting load hits every contender alike
        for who in ("peer", "peer-bf16", "lora", "lora-bf16") * cls + (*peer_gen, "gen-lora-bf16") * gen:
            runs[who].append(spawn(argparse.Namespace(**{**vars(args), "seed": seed}), who))
        if gen:  # the peer's best CPU configuration: whichever precision trained faster on the first seed
            peer_gen = (max(peer_gen, key=lambda w: runs[w][0]["examples_per_s"]),)
    for who in ("full", "full-bf16") * cls:
        runs[who].append(spawn(argparse.Namespace(**{**vars(args), "seed": seeds[0]}), who))
    load_after = os.getloadavg()
    summary = {}
    if cls:
        summary.update(classification_summary(args, runs, seeds, load_before, load_after))
    if gen:
        summary.update(generation_summary(args, runs, seeds, load_before, load_after))
    summary.update({"seeds": seeds, "steps": args.steps, "batch_size": args.batch, "smoke": args.smoke,
                    "threads": next(r for rs in runs.values() for r in rs)["threads"],
                    "activation_checkpointing": args.checkpointing,
                    "load_avg_before": round(load_before[0], 2), "load_avg_after": round(load_after[0], 2)})
    print(json.dumps(summary))


def mrpc_accuracy(args, seeds: list[int]) -> None:
    """peftops LoRA fp32 against bf16 on MRPC, seeds interleaved: the F1 half of the accuracy target."""
    prepare_once(args, ("mrpc",))
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {who: [] for who in MRPC}
    for seed in seeds:
        for who in MRPC:
            runs[who].append(spawn(argparse.Namespace(**{**vars(args), "seed": seed}), who))
    load_after = os.getloadavg()
    print(f"\nMRPC, batch {args.batch}, {args.steps} steps, dev {args.dev}; seeds {seeds}; "
          f"load {load_before[0]:.2f} -> {load_after[0]:.2f}")
    _print_runs(runs, seeds, MRPC, 28, (("dev F1", "dev_f1", 7, ".3f"), ("dev acc", "dev_acc", 8, ".3f")))
    print(json.dumps({"mrpc_bf16_dev_f1_mean": round(_mean(runs, "mrpc-lora-bf16", "dev_f1"), 4),
                      "mrpc_fp32_dev_f1_mean": round(_mean(runs, "mrpc-lora", "dev_f1"), 4),
                      "mrpc_bf16_dev_acc_mean": round(_mean(runs, "mrpc-lora-bf16", "dev_acc"), 4),
                      "mrpc_fp32_dev_acc_mean": round(_mean(runs, "mrpc-lora", "dev_acc"), 4),
                      "mrpc_bf16_examples_per_s": round(_mean(runs, "mrpc-lora-bf16", "examples_per_s"), 3),
                      "mrpc_fp32_examples_per_s": round(_mean(runs, "mrpc-lora", "examples_per_s"), 3),
                      "per_seed": {who: [{"seed": s_, "dev_f1": r["dev_f1"], "dev_acc": r["dev_acc"]}
                                         for s_, r in zip(seeds, runs[who])] for who in MRPC},
                      "seeds": seeds, "steps": args.steps, "batch_size": args.batch, "smoke": args.smoke,
                      "load_avg_before": round(load_before[0], 2), "load_avg_after": round(load_after[0], 2)}))


def _mean(runs: dict[str, list[dict]], who: str, key: str) -> float:
    return statistics.fmean(r[key] for r in runs[who])


def _peak(runs: dict[str, list[dict]], who: str) -> float:  # the largest of the runs' peaks: what the machine must hold
    return max(r["peak_mb"] for r in runs[who])


def _print_runs(runs: dict[str, list[dict]], seeds: list[int], contenders: tuple[str, ...], name_width: int,
                columns: tuple[tuple[str, str, int, str], ...]) -> None:
    """One line per contender and seed: examples/s, peak MB, then ``columns`` (title, key, width, format)."""
    cols = (("examples/s", "examples_per_s", 10, ".2f"), ("peak MB", "peak_mb", 9, ".0f"), *columns)
    print(f"{'contender':{name_width}} {'seed':>4} " + " ".join(f"{t:>{w}}" for t, _, w, _ in cols))
    for who in contenders:
        for seed, r in zip(seeds, runs[who]):
            print(f"{CONTENDERS[who][0]:{name_width}} {seed:4d} " + " ".join(f"{r[k]:{w}{f}}" for _, k, w, f in cols))


def generation_summary(args, runs: dict[str, list[dict]], seeds: list[int], load_before, load_after) -> dict:
    """Print the generation table; return its figures. The peer is scored in its best configuration
    (the faster of fp32 and bf16 on the first seed, the only one it then runs), peftops in its
    default precision (bf16)."""
    print(f"\n{GEN_TASK} (generation), batch {args.batch}, {args.steps} steps, dev {args.gen_dev} prompts "
          f"(greedy); LoRA r=16 alpha=32 all linear, lr {LORA['lr']}; seeds {seeds}; {os.cpu_count()} CPUs, "
          f"load {load_before[0]:.2f} -> {load_after[0]:.2f}")
    _print_runs(runs, seeds, GENERATION, 38, (("ROUGE-L", "rouge_l", 8, ".4f"), ("tok F1", "token_f1", 7, ".4f"),
                                             ("eval ex/s", "eval_examples_per_s", 9, ".2f"),
                                             ("train s", "train_s", 8, ".1f"), ("final loss", "final_loss", 10, ".4f")))
    peer = max(("gen-peer", "gen-peer-bf16"), key=lambda w: (len(runs[w]), _mean(runs, w, "examples_per_s")))
    ours = "gen-lora-bf16"
    return {
        "gen_task": GEN_TASK, "gen_dev_examples": args.gen_dev, "gen_peer_best": CONTENDERS[peer][2],
        "gen_examples_per_s": round(_mean(runs, ours, "examples_per_s"), 3),
        "peer_gen_examples_per_s": round(_mean(runs, peer, "examples_per_s"), 3),
        "peer_gen_fp32_vs_bf16_first_seed": [round(runs[w][0]["examples_per_s"], 3) for w in ("gen-peer", "gen-peer-bf16")],
        "gen_speedup": round(_mean(runs, ours, "examples_per_s") / _mean(runs, peer, "examples_per_s"), 2),
        "gen_peak_mb": round(_peak(runs, ours)), "peer_gen_peak_mb": round(_peak(runs, peer)),
        "gen_memory_ratio": round(_peak(runs, ours) / _peak(runs, peer), 3),
        "gen_rouge_l_mean": round(_mean(runs, ours, "rouge_l"), 4),
        "peer_gen_rouge_l_mean": round(_mean(runs, peer, "rouge_l"), 4),
        "gen_token_f1_mean": round(_mean(runs, ours, "token_f1"), 4),
        "peer_gen_token_f1_mean": round(_mean(runs, peer, "token_f1"), 4),
        "gen_eval_examples_per_s": round(_mean(runs, ours, "eval_examples_per_s"), 2),
        "peer_gen_eval_examples_per_s": round(_mean(runs, peer, "eval_examples_per_s"), 2),
        "gen_per_seed": {who: [{"seed": sd, "examples_per_s": round(r["examples_per_s"], 3),
                                "peak_mb": round(r["peak_mb"]), "rouge_l": round(r["rouge_l"], 4),
                                "token_f1": round(r["token_f1"], 4), "final_loss": round(r["final_loss"], 4)}
                               for sd, r in zip(seeds, runs[who])] for who in GENERATION},
    }


def classification_summary(args, runs: dict[str, list[dict]], seeds: list[int], load_before, load_after) -> dict:
    """Print the SST-2 table; return its figures."""
    def mean(who: str, key: str) -> float:
        return _mean(runs, who, key)

    def peak(who: str) -> float:
        return _peak(runs, who)

    print(f"\nSST-2, batch {args.batch}, {args.steps} steps, dev {args.dev}; LoRA r=16 alpha=32 all linear, "
          f"lr {LORA['lr']}, FFT lr {FULL['lr']}; seeds {seeds}; {os.cpu_count()} CPUs, "
          f"load {load_before[0]:.2f} -> {load_after[0]:.2f}")
    _print_runs(runs, seeds, CLASSIFICATION, 32, (("dev acc", "dev_acc", 8, ".3f"),
                                                  ("eval ex/s", "eval_examples_per_s", 9, ".1f"),
                                                  ("train s", "train_s", 8, ".1f"), ("CPU s", "cpu_s", 8, ".1f"),
                                                  ("final loss", "final_loss", 10, ".4f")))
    ours_ex, peer_ex = mean("lora", "examples_per_s"), mean("peer", "examples_per_s")
    bf16_ex, peer_bf16_ex = mean("lora-bf16", "examples_per_s"), mean("peer-bf16", "examples_per_s")
    peer_best = max(peer_ex, peer_bf16_ex)
    full, full_bf16 = runs["full"][0], runs["full-bf16"][0]
    return {
        "bf16_examples_per_s": round(bf16_ex, 3),
        "fp32_examples_per_s": round(ours_ex, 3),
        "bf16_speedup_vs_fp32": round(bf16_ex / ours_ex, 2),
        "peer_examples_per_s": round(peer_ex, 3),
        "peer_bf16_examples_per_s": round(peer_bf16_ex, 3),
        "speedup_vs_peer_best": round(bf16_ex / peer_best, 2),
        "bf16_peak_mb": round(peak("lora-bf16")),
        "fp32_peak_mb": round(peak("lora")),
        "bf16_memory_ratio": round(peak("lora-bf16") / peak("lora"), 3),
        "bf16_dev_acc_mean": round(mean("lora-bf16", "dev_acc"), 4),
        "fp32_dev_acc_mean": round(mean("lora", "dev_acc"), 4),
        "eval_speedup_bf16": round(mean("lora-bf16", "eval_examples_per_s") / mean("lora", "eval_examples_per_s"), 2),
        "bf16_eval_examples_per_s": round(mean("lora-bf16", "eval_examples_per_s"), 2),
        "fp32_eval_examples_per_s": round(mean("lora", "eval_examples_per_s"), 2),
        "peftops_examples_per_s": round(ours_ex, 3),
        "speedup": round(ours_ex / peer_ex, 2),
        "peer_peak_mb": round(peak("peer")),
        "peer_bf16_peak_mb": round(peak("peer-bf16")),
        "peftops_peak_mb": round(peak("lora")),
        "memory_ratio": round(peak("lora") / peak("peer"), 3),
        "peer_dev_acc": round(mean("peer", "dev_acc"), 4),
        "peer_bf16_dev_acc": round(mean("peer-bf16", "dev_acc"), 4),
        "peftops_dev_acc": round(mean("lora", "dev_acc"), 4),
        "full_examples_per_s": round(full["examples_per_s"], 3),
        "full_peak_mb": round(full["peak_mb"]),
        "full_dev_acc": round(full["dev_acc"], 4),
        "full_bf16_examples_per_s": round(full_bf16["examples_per_s"], 3),
        "full_bf16_peak_mb": round(full_bf16["peak_mb"]),
        "full_bf16_dev_acc": round(full_bf16["dev_acc"], 4),
        "full_bf16_speedup_vs_fp32": round(full_bf16["examples_per_s"] / full["examples_per_s"], 2),
        "lora_vs_full_memory_ratio": round(peak("lora") / full["peak_mb"], 3),
        "cpu_speedup": round(mean("peer", "cpu_s") / mean("lora", "cpu_s"), 2),
        "per_seed": {who: [{"seed": sd, "examples_per_s": round(r["examples_per_s"], 3),
                            "peak_mb": round(r["peak_mb"]), "dev_acc": r["dev_acc"],
                            "eval_examples_per_s": round(r["eval_examples_per_s"], 2),
                            "cpu_s": round(r["cpu_s"], 1)} for sd, r in zip(seeds, runs[who])]
                     for who in CLASSIFICATION},
        "dev_examples": args.dev, "memory_kind": runs["lora"][0]["memory_kind"],
    }


if __name__ == "__main__":
    main()
