# python tests/methods/train_driver.py RUN_DIR METHOD [SECONDS_PER_STEP [PRECISION [SECONDS_PER_CHECKPOINT_FILE]]]
"""Train a tiny Gemma 3 with checkpoints in its own process (the resume-after-SIGKILL test kills it).

Prints ``step N`` after every step, ``resumed_from N`` at the end, and writes the final trainable
weights to ``RUN_DIR/final.safetensors``.
"""

import dataclasses
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from methods_cases import overfit_split, tiny_wide  # noqa: E402
from peftops.config import TrainConfig  # noqa: E402
from peftops.methods import get_method, make_config  # noqa: E402
from peftops.training.loop import train  # noqa: E402

VALUES = {  # dropout and a cosine schedule: the RNG and the scheduler must resume too
    "lora": {"lr": 1e-2, "r": 4, "alpha": 8, "dropout": 0.1},
    "adapter": {"lr": 1e-2, "bottleneck": 8},
    "prompt": {"lr": 1e-1, "num_virtual_tokens": 4},
    "full": {"lr": 1e-3},
}
TRAIN = TrainConfig(steps=14, batch_size=4, warmup_steps=2, checkpoint_every=3, schedule="cosine", grad_accum=2)


def main() -> None:
    run_dir, name = Path(sys.argv[1]), sys.argv[2]
    pause = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    precision = sys.argv[4] if len(sys.argv) > 4 else "fp32"
    slow_write = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    if slow_write:  # a checkpoint write that takes long enough to be killed in the middle of it
        import peftops.training.loop as loop

        real_save = loop.save_file

        def slow_save(tensors, path, *a, **kw):
            real_save(tensors, path, *a, **kw)
            print(f"wrote {path}", flush=True)
            time.sleep(slow_write)

        loop.save_file = slow_save
    torch.set_num_threads(1)
    method, cfg = get_method(name), make_config(name, VALUES[name])
    torch.manual_seed(0)
    model = method.apply(tiny_wide(seed=0), cfg)

    def on_step(step: int, record: dict) -> None:
        print(f"step {step}", flush=True)
        time.sleep(pause)

    result = train(model, method, cfg, overfit_split(12), TRAIN.model_copy(update={"precision": precision}), run_dir, pad_id=0, base_params=1,
                   progress=False, on_step=on_step)
    save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad},
              str(run_dir / "final.safetensors"))
    print(f"resumed_from {result.resumed_from}", flush=True)


if __name__ == "__main__":
    main()
