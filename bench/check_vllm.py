# make check-vllm   (or: .venv/bin/python bench/check_vllm.py [--n 20])
"""An exported LoRA adapter loads and predicts the same in vLLM's real OpenAI server as in peftops.

1. peftops' own stages train a small SST-2 LoRA (r=16, 30 steps, fp32) in a state directory of the
   check's own (``<state>/check-vllm``, cached by stage keys between runs), publish it to that
   directory's registry and export it with ``peftops registry export``: a plain PEFT folder with
   its model card and ``prompt.json``.
2. The first N dev prompts are rendered from the export's ``prompt.json`` (template, field
   preprocessing, verbalizers) and must tokenize to the ids peftops trained and evaluates on.
   peftops scores them with its evaluator (``label_scores``) on the base + the exported folder.
3. vLLM's OpenAI server (the CPU build in ``.venv-vllm``) serves the base snapshot with the export
   as a LoRA module (``--enable-lora --lora-modules sst2=DIR``) on 127.0.0.1, in float32. Its
   ``/tokenize`` must give the same prompt ids, and the completions API (``echo`` + ``logprobs``)
   gives the exact log-probability of each verbalizer's tokens after each prompt, so the prediction
   is read exactly as peftops reads it. The base is scored too: the LoRA must move the numbers.
4. Every prompt must get the same label from both; the report gives max |Δ log-prob| over the
   verbalizer tokens. Exit 1 on any difference; bad state (no snapshot, no vLLM venv) is one line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from peftops.pipeline.env import apply_defaults  # noqa: E402

apply_defaults()

from peftops.errors import PeftopsError  # noqa: E402

TASK, METHOD, LORA_NAME = "sst2", "lora", "sst2"
# A small budget: the point is parity of the served adapter, not its accuracy. fp32 throughout, so
# both sides compute the same function (vLLM is started with --dtype float32).
PARAMS = {"data": {"task": TASK, "train_size": 240, "dev_size": 200},
          "train": {"steps": 30, "batch_size": 8, "warmup_steps": 3, "precision": "fp32"},
          "methods": {METHOD: {"r": 16}}}
SERVE_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 300
STOP_TIMEOUT_S = 30
# A server that silently ignored the adapter would serve the base: the check also scores the base
# and requires the LoRA to move some verbalizer log-prob by more than this, so agreement with
# peftops means the adapter was applied (30 steps move them by whole nats).
MIN_LORA_SHIFT = 1e-2
# Offline and quiet; vLLM's CPU backend reserves VLLM_CPU_KVCACHE_SPACE GiB of KV cache up front,
# its default is sized for a server and 512-token prompts of a 270M model need a fraction of one
# GiB. A value already in the environment wins.
SERVER_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
              "TRANSFORMERS_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}


class CheckError(PeftopsError):
    """A state the check cannot run in (no snapshot, no vLLM); printed as one line."""


def check_home(params) -> tuple[Path, Path]:
    """(the check's state directory, the project's base snapshot). The snapshot is linked into the
    check's directory, not copied (1 GB), and never built here: that is `peftops base import`."""
    from peftops.config import state_home
    from peftops.model.snapshot import MANIFEST, snapshot_dir

    project = state_home()
    base = snapshot_dir(params.base.name, project)
    if not (base / MANIFEST).exists():
        raise CheckError(f"no base snapshot at {base}; run `peftops base import` first")
    cfg = json.loads((base / "config.json").read_text())
    if not cfg.get("architectures"):  # vLLM would resolve Gemma3TextModel and pick an embedding runner
        raise CheckError(f"{base / 'config.json'} names no architectures; vLLM cannot pick the causal LM "
                         "class: rebuild it with `peftops base import --force`")
    home = project / "check-vllm"
    link = snapshot_dir(params.base.name, home)
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(base.resolve(), target_is_directory=True)
    return home, base.resolve()


def train_and_export(params, home: Path) -> tuple[Path, bool]:
    """Prepare, train (both skipped when their stage keys hit), publish (idempotent) and export the
    adapter with the registry CLI; returns (the exported folder, whether training was cached)."""
    from peftops import stages as P
    from peftops.pipeline import caching

    snap = P._snapshot(params, home)
    digest = caching.data_digest(params, TASK)
    data_dir, run_dir = P.Layout.of(home).data(TASK), P.Layout.of(home).run(TASK, METHOD)
    key = caching.stage_key("prepare", params, TASK, None, digest, snap.digest)
    if not caching.outputs_current(data_dir, "prepare", key):
        P.stage_prepare(params, home)
        caching.record_key(data_dir, "prepare", key)
    key = caching.stage_key("train", params, TASK, METHOD, digest, snap.digest)
    cached = caching.outputs_current(run_dir, "train", key)
    if not cached:
        print(f"training {METHOD} on {TASK} ({params.train.steps} steps) in {home}", flush=True)
        P.stage_train(params, METHOD, home, progress=False, resume=False)
        caching.record_key(run_dir, "train", key)
    version = P.stage_publish(params, home, METHOD, tags={"purpose": "check-vllm"})
    out = home / "export"
    cmd = [sys.executable, "-m", "peftops.cli.main", "registry", "export", str(out), f"{TASK}:{version.version}",
           "--json"]
    # cwd=REPO: `-m` then imports this checkout's peftops, as this script does
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO,
                         env={**os.environ, "PEFTOPS_HOME": str(home)})
    if res.returncode != 0:
        raise CheckError(f"`peftops registry export` failed: {(res.stderr or res.stdout).strip()[-300:]}")
    return Path(json.loads(res.stdout)[0]["path"]), cached


def dev_prompts(params, home: Path, export: Path, n: int):
    """The first ``n`` prepared dev examples and their prompt texts, rendered from the export's
    ``prompt.json``; refuses if those texts or its verbalizers do not give the prepared ids."""
    from peftops import stages as P
    from peftops.data.manifest import get_task
    from peftops.data.prepared import load_prepared
    from peftops.data.reading import read_split_source
    from peftops.model.snapshot import load_tokenizer

    dev = load_prepared(P.Layout.of(home).data(TASK) / "dev.json")
    fmt = json.loads((export / "prompt.json").read_text())
    by_line = {ex.line: ex for ex in read_split_source(get_task(TASK), "dev", params.data.data_root).examples}
    # the card's preprocessing: each field stripped, then filled into the template
    texts = [fmt["template"].format(**{k: v.strip() for k, v in by_line[line].fields.items()})
             for line in dev.lines[:n]]
    tok = load_tokenizer(P._snapshot(params, home))
    ids = tok(texts, add_special_tokens=True)["input_ids"]
    verbalizers = [fmt["labels"][k] for k in sorted(fmt["labels"], key=int)]
    if [list(map(int, x)) for x in ids] != dev.input_ids[:n] or verbalizers != dev.verbalizers:
        raise CheckError(f"{export / 'prompt.json'} does not reproduce the prompts peftops trained on")
    return dev, texts


def peftops_scores(params, home: Path, export: Path, dev, n: int) -> list[list[float]]:
    """(n, labels) verbalizer log-probabilities from peftops' evaluator on base + exported folder, fp32."""
    import torch

    from peftops import stages as P
    from peftops.evaluation.evaluate import label_scores
    from peftops.model.snapshot import pad_token_id
    from peftops.training.memory import release_memory

    snap = P._snapshot(params, home)
    cpu = torch.device("cpu")
    model = P.load_adapted(snap, METHOD, export, cpu, "fp32")
    rows, bs = [], params.train.eval_batch_size
    for start in range(0, n, bs):  # batched and left-padded, as `peftops evaluate` scores them
        prompts = dev.input_ids[start:min(n, start + bs)]
        rows += label_scores(model, prompts, dev.label_token_ids, pad_token_id(snap), cpu).tolist()
    del model
    release_memory()
    return rows


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the server binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, body: dict | None = None, timeout: float = REQUEST_TIMEOUT_S) -> dict:
    """GET (no body) or POST JSON; the decoded JSON answer."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as err:  # the server's own message says what it refused
        raise CheckError(f"{url}: HTTP {err.code}: {err.read().decode(errors='replace')[:300]}") from None


def start_server(python: Path, base: Path, export: Path, port: int, log: Path) -> subprocess.Popen:
    """vLLM's OpenAI server in its own process group (its engine core is a child process: stop them
    together). The module, not the ``vllm serve`` script: the ``vllm-cpu`` distribution's script asks
    ``importlib.metadata`` for a distribution named ``vllm`` and exits before parsing its arguments;
    the module takes the same flags (the model as ``--model``)."""
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(base),
           "--host", "127.0.0.1", "--port", str(port),
           "--served-model-name", base.name, "--enable-lora", "--lora-modules", f"{LORA_NAME}={export}",
           "--max-lora-rank", "16", "--max-model-len", "512", "--enforce-eager", "--dtype", "float32"]
    with open(log, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**SERVER_ENV, **os.environ})


def wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = SERVE_TIMEOUT_S) -> float:
    """Seconds until ``/v1/models`` lists the LoRA module; one clear error if the server dies or is late."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:]
            raise CheckError(f"the vLLM server exited with code {proc.returncode}: "
                             f"{' '.join(tail)[-300:] or 'nothing logged'} (log: {log})")
        try:
            models = [m["id"] for m in http(url + "/v1/models", timeout=5)["data"]]
            if LORA_NAME in models:
                return time.monotonic() - t0
            raise CheckError(f"vLLM serves {models}, not the LoRA module {LORA_NAME!r} (log: {log})")
        except OSError:  # not listening yet (URLError, refused, timed out)
            time.sleep(1)
    raise CheckError(f"the vLLM server did not answer /v1/models within {timeout:.0f} s (log: {log})")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL after STOP_TIMEOUT_S."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def vllm_scores(url: str, model: str, prompts: list[list[int]], label_ids: list[list[int]]) -> list[list[float]]:
    """(n, labels) summed log-probabilities of each verbalizer's tokens after each prompt, from the
    served ``model`` (the LoRA module or the base). Prompt + verbalizer ids go in with ``echo``, so
    the log-probs of the prompt's own tokens come back: exact for every verbalizer, not only for
    those in a top-k of the next token. All of them in one request."""
    seqs = [(p + ids, len(ids)) for p in prompts for ids in label_ids]
    out = http(url + "/v1/completions", {"model": model, "prompt": [s for s, _ in seqs], "max_tokens": 1,
                                          "echo": True, "logprobs": 1, "temperature": 0.0})
    choices = sorted(out["choices"], key=lambda c: c["index"])
    if len(choices) != len(seqs):
        raise CheckError(f"vLLM answered {len(choices)} choices for {len(seqs)} prompts")
    flat = [sum(c["logprobs"]["token_logprobs"][len(s) - k:len(s)]) for (s, k), c in zip(seqs, choices)]
    return [flat[i:i + len(label_ids)] for i in range(0, len(flat), len(label_ids))]


def report(dev, texts, ours, theirs, tokenized: list[bool]) -> tuple[int, float]:
    """Print one row per prompt; (prompts that agree, max |Δ log-prob|)."""
    names = [v.strip() for v in dev.verbalizers]
    cols = " ".join(f"{'peftops ' + n:>17} {'vllm ' + n:>17}" for n in names)
    print(f"{'#':>3} {'line':>5} {'gold':>8} {'peftops':>8} {'vllm':>8} {cols} {'|Δ|':>9} {'ids':>4}  prompt")
    agree, worst = 0, 0.0
    for i, (a, b) in enumerate(zip(ours, theirs)):
        pa, pb = max(range(len(a)), key=a.__getitem__), max(range(len(b)), key=b.__getitem__)
        d = max(abs(x - y) for x, y in zip(a, b))
        agree, worst = agree + (pa == pb), max(worst, d)
        vals = " ".join(f"{x:>17.6f} {y:>17.6f}" for x, y in zip(a, b))
        text = texts[i].splitlines()[0][:40]
        print(f"{i:>3} {dev.lines[i]:>5} {names[dev.labels[i]]:>8} {names[pa]:>8} {names[pb]:>8} {vals} "
              f"{d:>9.2e} {'ok' if tokenized[i] else 'DIFF':>4}  {text}")
    return agree, worst


def main(argv: list[str] | None = None) -> int:
    """Run the check; 0 when every prompt gets the same label (and the same ids) in vLLM."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="dev prompts to compare (default 20)")
    ap.add_argument("--vllm-python", type=Path, default=REPO / ".venv-vllm" / "bin" / "python",
                    help="the python of vLLM's venv (default .venv-vllm/bin/python; `make check-vllm` builds it)")
    args = ap.parse_args(argv)
    t_all = time.monotonic()
    try:
        if not os.access(args.vllm_python, os.X_OK):
            raise CheckError(f"{args.vllm_python}: no vLLM venv there; `make check-vllm` builds .venv-vllm")
        from peftops.config import PipelineParams, validate

        params = validate(PipelineParams, PARAMS)
        if not 1 <= args.n <= params.data.dev_size:
            raise CheckError(f"--n must be between 1 and the {params.data.dev_size} prepared dev examples")
        home, base = check_home(params)
        export, cached = train_and_export(params, home)
        dev, texts = dev_prompts(params, home, export, args.n)
        ours = peftops_scores(params, home, export, dev, args.n)
        port, log = free_port(), home / "vllm-serve.log"
        url = f"http://127.0.0.1:{port}"
        proc = start_server(args.vllm_python, base, export, port, log)
        try:
            start_s = wait_ready(proc, url, log)
            version = http(url + "/version", timeout=10).get("version", "?")
            tokenized = [http(url + "/tokenize", {"model": LORA_NAME, "prompt": t, "add_special_tokens": True}
                              )["tokens"] == dev.input_ids[i] for i, t in enumerate(texts)]
            theirs = vllm_scores(url, LORA_NAME, dev.input_ids[:args.n], dev.label_token_ids)
            plain = vllm_scores(url, base.name, dev.input_ids[:args.n], dev.label_token_ids)
        finally:
            stop_server(proc)
    except (PeftopsError, OSError, subprocess.TimeoutExpired) as err:  # URLError and timeouts are OSErrors
        print(f"check-vllm: {err}", file=sys.stderr)
        return 1
    print(f"adapter {export.name} ({export}); base {base}; vLLM {version}, ready in {start_s:.1f} s")
    agree, worst = report(dev, texts, ours, theirs, tokenized)
    shift = max(abs(x - y) for a, b in zip(theirs, plain) for x, y in zip(a, b))
    summary = {"prompts": args.n, "agree": agree, "same_prompt_ids": sum(tokenized),
               "max_abs_dlogprob": float(f"{worst:.3g}"),
               "lora_vs_base_max_dlogprob": round(shift, 3), "vllm": version, "serve_start_s": round(start_s, 1),
               "adapter": export.name, "train_cached": cached, "total_s": round(time.monotonic() - t_all, 1)}
    print(json.dumps(summary))
    if agree < args.n:
        print(f"check-vllm: {args.n - agree} of {args.n} prompts get another label in vLLM", file=sys.stderr)
    if not all(tokenized):
        print(f"check-vllm: vLLM tokenizes {args.n - sum(tokenized)} rendered prompts to other ids", file=sys.stderr)
    if shift <= MIN_LORA_SHIFT:
        print(f"check-vllm: the LoRA module scores like the base (max shift {shift:.2g}): adapter not applied",
              file=sys.stderr)
    return 0 if agree == args.n and all(tokenized) and shift > MIN_LORA_SHIFT else 1


if __name__ == "__main__":
    sys.exit(main())
