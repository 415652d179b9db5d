# On a CUDA machine: python bench/gpu_bench.py --snapshot DIR --split TRAIN_JSON [--steps 30] [--peer]
# Here (a CPU smoke run of the same code): .venv/bin/python bench/gpu_bench.py --device cpu --tiny --steps 2
"""The bf16 path on a GPU: LoRA and FFT on SST-2 batches, bf16 against fp32, through
``peftops.training.loop.train``; tokens/s, model FLOPs utilisation and peak memory (CUDA's max
allocated); ``--peer`` adds TRL ``SFTTrainer`` + peft LoRA on the same GPU, data and steps.

Prepared for a lent GPU machine, where nothing can be fetched and at most 64 MiB travels with the
working tree: the 1 GB snapshot cannot go, so ``--snapshot`` may be a folder holding only the
snapshot's ``config.json``, and the model is then built from it with random weights (seed 0); ``--peer`` needs the snapshot's tokenizer files there too (33 MB).
Speed, utilisation and memory depend on the shapes, not on the values, so those figures hold;
the losses and any accuracy do not. ``--split`` is a prepared training split (``bench/train_bench.py``
writes SST-2's at ``.peftops/bench/sst2-480-200/train.json``, 0.1 MB): the real prompts' lengths and
ids. A package missing there (pydantic, pydantic-core, annotated-types, typing-inspection; trl and
datasets for ``--peer``) travels as wheels (the device tool's README). Each contender runs in its
own process. The last line is one JSON object.

Model FLOPs per trained token, the usual count: 2 per weight forward and 4 backward for the
transformer body's linear layers (``body_params``: every weight but the tied 262k x 640 embedding),
2 forward + 2 backward (the activations' gradient only) where the weights are frozen (LoRA's base),
and the LM head at the supervised positions only (2 + 2 per head weight for a frozen head, + 2 for
FFT's), attention's score products left out (short rows). ``--peak-tflops`` is the card's dense
bf16 (or fp32/TF32) figure; MFU is model FLOPs per second over it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from peftops.pipeline.env import apply_defaults  # noqa: E402

apply_defaults()

CONTENDERS = ("lora-bf16", "lora-fp32", "full-bf16", "full-fp32")
LORA = {"lr": 5e-4, "r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
FULL = {"lr": 2e-5}
# H100 SXM dense figures (bf16 tensor cores; fp32 runs as TF32 only where allowed, so plain fp32)
PEAK_TFLOPS = {"bf16": 989.0, "fp32": 67.0}


def build_model(snapshot: Path, device, dtype, tiny: bool):
    """The snapshot's weights if it has them, else its architecture with random weights (seed 0)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, Gemma3TextConfig

    if tiny:
        cfg = Gemma3TextConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=1, head_dim=16, pad_token_id=0)
        cfg.architectures = ["Gemma3ForCausalLM"]
    elif (snapshot / "model.safetensors").exists():
        return AutoModelForCausalLM.from_pretrained(str(snapshot), dtype=dtype).to(device), True
    else:
        cfg = AutoConfig.from_pretrained(str(snapshot))
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, dtype=dtype).to(device), False


def model_flops_per_token(model, method: str, supervised_frac: float) -> tuple[float, int]:
    """Model FLOPs per trained token (the module docstring's count) and the body's weight count."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = inner.lm_head.weight.numel()
    body = sum(p.numel() for n, p in inner.named_parameters()
               if p.dim() == 2 and "embed_tokens" not in n and "lm_head" not in n and "lora_" not in n)
    per_weight = 6 if method == "full" else 4  # frozen weights: no weight gradient
    head_per = 6 if method == "full" else 4
    return per_weight * body + head_per * head * supervised_frac, body


def child(args) -> None:
    """One contender: build, train ``args.steps`` steps, report."""
    import torch

    from peftops.config import TrainConfig
    from peftops.data.prepared import load_prepared
    from peftops.methods import get_method, make_config
    from peftops.model.params import count_params
    from peftops.training.loop import train
    from peftops.training.precision import storage_dtype

    method_name, precision = args.run.split("-")
    device = torch.device(args.device)
    split = load_prepared(args.split) if args.split else _tiny_split()
    method = get_method(method_name)
    model, real = build_model(Path(args.snapshot or "."), device, storage_dtype(precision, method), args.tiny)
    base_params = count_params(model)
    cfg = make_config(method_name, LORA if method_name == "lora" else FULL)
    torch.manual_seed(0)
    model = method.apply(model, cfg)
    tcfg = TrainConfig(steps=args.steps, batch_size=args.batch, warmup_steps=min(3, args.steps - 1),
                       precision=precision, activation_checkpointing=False)
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        r = train(model, method, cfg, split, tcfg, Path(tmp), pad_id=model.config.pad_token_id or 0,
                  base_params=base_params, device=device, progress=False)
    supervised = r.steps * args.batch  # one label token per example
    flops, body = model_flops_per_token(model, method_name, supervised / max(1, r.tokens_per_s * r.train_time_s))
    achieved = flops * r.tokens_per_s
    print(json.dumps({"contender": args.run, "real_weights": real, "device": str(device),
                      "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                      "tokens_per_s": round(r.tokens_per_s, 1), "examples_per_s": round(r.examples_per_s, 2),
                      "peak_mb": round(r.peak_memory_mb), "memory_kind": r.memory_kind,
                      "model_tflops_per_s": round(achieved / 1e12, 3),
                      "mfu": round(achieved / (args.peak_tflops.get(precision, 1.0) * 1e12), 4),
                      "body_params": body, "final_loss": round(r.losses[-1], 4), "train_s": round(r.train_time_s, 2)}))


def _tiny_split():
    """A small in-memory split for the smoke run (lengths 6-30, two one-token labels)."""
    import random

    from peftops.data.prepared import PreparedSplit

    rng = random.Random(0)
    ids = [[rng.randrange(3, 500) for _ in range(rng.randrange(6, 30))] for _ in range(64)]
    return PreparedSplit(task="smoke", split="train", verbalizers=[" a", " b"], label_token_ids=[[1], [2]],
                         input_ids=ids, labels=[i % 2 for i in range(64)], lines=list(range(64)), source="smoke",
                         source_sha256="")


def peer(args) -> None:
    """TRL SFTTrainer + peft LoRA (bf16=True) on the same prompts, completions and steps."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from peftops.data.prepared import load_prepared
    from peftops.methods.base import GEMMA3_LINEAR

    split = load_prepared(args.split) if args.split else _tiny_split()
    model, _ = build_model(Path(args.snapshot or "."), torch.device(args.device), torch.float32, args.tiny)
    rows = [{"input_ids": p + split.label_token_ids[y], "completion_mask": [0] * len(p) + [1]}
            for p, y in zip(split.input_ids, split.labels)]
    sft = SFTConfig(output_dir=tempfile.mkdtemp(prefix="gpu-peer-"), per_device_train_batch_size=args.batch,
                    max_steps=args.steps, learning_rate=LORA["lr"], completion_only_loss=True, report_to=[],
                    save_strategy="no", bf16=args.device != "cpu", use_cpu=args.device == "cpu", disable_tqdm=True,
                    dataloader_num_workers=0, seed=0)
    trainer = SFTTrainer(model=model, args=sft, train_dataset=Dataset.from_list(rows),
                         processing_class=AutoTokenizer.from_pretrained(args.snapshot),  # its tokenizer files
                         peft_config=LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                                target_modules=list(GEMMA3_LINEAR), task_type="CAUSAL_LM"))
    if args.device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if args.device != "cpu" else float("nan")
    print(json.dumps({"contender": "trl-lora-bf16", "examples_per_s": round(args.steps * args.batch / wall, 2),
                      "peak_mb": round(peak), "train_s": round(wall, 2)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--snapshot", help="a snapshot folder, or one holding only its config.json (random weights)")
    ap.add_argument("--split", help="a prepared training split (train.json)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--peer", action="store_true", help="also TRL SFTTrainer + peft LoRA, bf16=True")
    ap.add_argument("--tiny", action="store_true", help="a tiny in-code model and split (a smoke run)")
    ap.add_argument("--run", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.peak_tflops = PEAK_TFLOPS
    if args.run == "trl":
        return peer(args)
    if args.run:
        return child(args)
    if not (args.tiny or args.snapshot):
        raise SystemExit("--snapshot DIR (or --tiny) is needed")
    flags = ["--device", args.device, "--steps", str(args.steps), "--batch", str(args.batch)]
    flags += ["--snapshot", args.snapshot] if args.snapshot else []
    flags += ["--split", args.split] if args.split else []
    flags += ["--tiny"] if args.tiny else []
    results = []
    for who in CONTENDERS + (("trl",) if args.peer else ()):
        out = subprocess.run([sys.executable, __file__, *flags, "--run", who], capture_output=True, text=True)
        if out.returncode != 0:
            sys.stderr.write(out.stderr[-3000:])
            results.append({"contender": who, "error": out.stderr.strip().splitlines()[-1][:300] if out.stderr else "?"})
            continue
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    by = {r["contender"]: r for r in results if "error" not in r}
    ratio = lambda a, b, k: round(by[a][k] / by[b][k], 2) if a in by and b in by else None  # noqa: E731
    print(json.dumps({"runs": results, "lora_bf16_vs_fp32": ratio("lora-bf16", "lora-fp32", "tokens_per_s"),
                      "full_bf16_vs_fp32": ratio("full-bf16", "full-fp32", "tokens_per_s"),
                      "lora_bf16_vs_trl": ratio("lora-bf16", "trl-lora-bf16", "examples_per_s"),
                      "steps": args.steps, "batch_size": args.batch}))


if __name__ == "__main__":
    main()
