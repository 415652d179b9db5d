# python bench/merge_bf16_probe.py [--home DIR] [--probes 32] [--std 0.02]
"""The merge certificate's bf16 figures on Gemma 3 270M: an r=16 LoRA on every linear layer with
random ``B`` (no training needed: the rounding, not the values, is what is measured), merged and
certified in fp32 and in bf16 on SST-2-shaped prompts. Prints one JSON line: each precision's max
|Δlogit| and mean KL between the adapter-applied and the merged model, and the bf16 noise floor
(the fp32 base against the bf16 base, same prompts)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def save_random_lora(snap, out_dir: Path, std: float = 0.02) -> None:
    """Write an r=16, alpha=32 LoRA on every linear layer of ``snap`` whose ``B`` entries are drawn
    from N(0, std) (seed 0) to ``out_dir``: a merge's cost and rounding are the shapes', not the values'."""
    import torch

    from peftops.methods import get_method, make_config
    from peftops.model.snapshot import load_model

    lora, cfg = get_method("lora"), make_config("lora", {"r": 16, "alpha": 32})
    torch.manual_seed(0)
    model = lora.apply(load_model(snap), cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, std)
    lora.save(model, cfg, out_dir)


def main() -> None:
    import torch

    from peftops.config import BaseConfig, MergeConfig
    from peftops.data.prepared import PreparedSplit
    from peftops.evaluation.merge import compare_logits, last_logits, merge_adapter
    from peftops.model.snapshot import import_base, load_model, load_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", default=None)
    ap.add_argument("--probes", type=int, default=32)
    ap.add_argument("--std", type=float, default=0.02, help="std of the random LoRA B entries")
    args = ap.parse_args()
    torch.set_num_threads(1)
    snap = import_base(BaseConfig(), args.home)
    tok = load_tokenizer(snap)
    words = "the film was a quiet , moving and often funny story about loss".split()
    prompts = [tok(f"Review: {' '.join(words[i % 5:i % 5 + 3 + i % 9])}\nSentiment:")["input_ids"]
               for i in range(args.probes)]
    probe = PreparedSplit(task="probe", split="dev", verbalizers=[" negative", " positive"],
                          label_token_ids=[[1], [2]], input_ids=prompts, labels=[0] * len(prompts),
                          lines=list(range(len(prompts))), source="mem", source_sha256="")
    out: dict = {"probes": len(prompts), "lora_b_std": args.std}
    with tempfile.TemporaryDirectory() as tmp:
        save_random_lora(snap, Path(tmp), args.std)
        cfg = MergeConfig(probe_size=len(prompts), tolerance=1e9)  # measure, do not refuse
        for precision in ("fp32", "bf16"):
            cert = merge_adapter(snap, Path(tmp), probe, cfg, precision=precision)
            out[precision] = {"max_abs_dlogit": cert.max_abs_dlogit, "mean_kl": cert.mean_kl}
        pad = tok.pad_token_id
        a = last_logits(load_model(snap), prompts, pad)
        b = last_logits(load_model(snap, dtype=torch.bfloat16), prompts, pad, precision="bf16")
        floor_abs, floor_kl = compare_logits(a, b)
        out["bf16_vs_fp32_base"] = {"max_abs_dlogit": floor_abs, "mean_kl": floor_kl,
                                    "max_abs_logit": float(a.abs().max())}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
