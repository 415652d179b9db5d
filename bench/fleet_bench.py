# .venv/bin/python -m bench.fleet_bench 1 2                 (local runner by max_concurrency, tiny models)
# .venv/bin/python -m bench.fleet_bench --runners [--smoke] [--only runners|orchestration] [--orch-tasks N]
#     [--variants local,ray_1x2,ray_2x1,ray_1x1] [--glue sst2,cola,mrpc,rte] [--rounds N]
#     (local vs Ray 1x2 vs Ray 2x1 on the real base, then 1,000 tiny tasks on Ray 2x1)
# .venv/bin/python -m bench.fleet_bench --probe prefect [N] | mlflow [N] | gc
#     (what a flow run, a task run, a client, a task's MLflow store calls cost)
"""Fleet wall time.

Default: 4 tiny SST-2-shaped tasks (LoRA, 12 steps) for each ``max_concurrency`` given, from a
fresh state, then the unchanged rerun (all cache hits).

``--runners``: the real Gemma 3 270M (8 tasks: the four GLUE tasks, two copies each, 20 steps)
side by side with (a) the local runner, (b) Ray with one worker of 2 CPUs, (c) Ray with two workers
of 1 CPU, (d) Ray with one single-thread worker alone (the ideal for (c) is twice its rate; all on
a private Ray cluster on this machine), then a fleet of 1,000 tiny tasks of one step (its
stages nearly free) on Ray 2x1 for the orchestration cost per task. A task's fixed overhead is
its wall time less its training loop and evaluation stage; ``fixed_overhead_frac`` puts it over a
demo-budget LoRA training (the embedded ``train.steps`` at this run's seconds per step).
``--smoke``: tiny models, 4 tasks and a 16-task orchestration fleet. ``--rounds N``: each contender
N times, in alternating order (a b c d, d c b a, ...), its figures the means. Last line: one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="peftops-bench-prefect-"))
from peftops.pipeline.env import apply_defaults  # noqa: E402

apply_defaults()
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from flows.fleet import fleet  # noqa: E402
from peftops.config import DataConfig, PipelineParams, TrainConfig  # noqa: E402
from test_orchestration import write_manifest  # noqa: E402
from tiny import make_snapshot, write_sst2_like  # noqa: E402

TASKS = ("t1", "t2", "t3", "t4")
GLUE = ("sst2", "cola", "mrpc", "rte")


def tiny_params(tmp: Path, names, steps: int) -> PipelineParams:
    for i, name in enumerate(names):
        write_sst2_like(tmp / "data" / name, n_train=64, n_dev=32, seed=i)
    manifest = write_manifest(tmp / f"tasks-{len(names)}.yaml", {n: f"{n}/glue/SST-2" for n in names})
    return PipelineParams(
        data=DataConfig(task=names[0], data_root=str(tmp / "data"), manifest=str(manifest), train_size=0, dev_size=0),
        train=TrainConfig(steps=steps, batch_size=8, warmup_steps=min(1, steps - 1)),
        methods={"lora": {"lr": 2e-2, "r": 4, "alpha": 8, "dropout": 0.0}})


def real_params(tmp: Path, steps: int, glue: tuple[str, ...] = GLUE) -> tuple[PipelineParams, list[str]]:
    """The shipped GLUE entries (``glue``), two copies each (distinct task names, same data)."""
    import yaml

    from peftops.config import default_data_root, load_params

    shipped = yaml.safe_load((Path(__file__).resolve().parents[1] / "peftops" / "data" / "tasks.yaml").read_text())
    entries = {f"{t}-{c}": shipped["tasks"][t] for t in glue for c in ("a", "b")}
    manifest = tmp / "tasks-glue.yaml"
    manifest.write_text(yaml.safe_dump({"tasks": entries}, sort_keys=False))
    p = load_params(None)
    p = p.model_copy(update={
        "data": p.data.model_copy(update={"manifest": str(manifest), "data_root": str(default_data_root())}),
        "train": p.train.model_copy(update={"steps": steps, "warmup_steps": min(p.train.warmup_steps, steps)})})
    return p, sorted(entries)


def overheads(report: dict, steps: int, demo_steps: int) -> dict:
    """A fleet's per-task costs beside its training and evaluation loops (means over its tasks).

    ``fixed_overhead_s``: wall seconds less the training loop and the evaluation stage (base and
    adapter); it includes the merge. ``merge_s``: the merge stage alone (the model build, the fp32
    fold, and the parity certificate's forward passes over ``merge.probe_size`` probes through the
    merged model, and through the adapter-applied one unless the evaluation handed its logits
    over: the part that grows with the task's sequence length). ``setup_s``: the rest (pinning
    the base, preparing the data, building models, checkpoints, tracking, publishing, Prefect).
    ``demo_training_s``: a demo-budget LoRA training (``demo_steps``) at this run's seconds per step.
    """
    tasks = list(report["tasks"].values())
    loop = [sum(r.get("train_time_s") or 0 for r in o["rows"]) for o in tasks]
    fixed = [o["seconds"] - lp - o["stage_seconds"].get("evaluate", 0.0) for o, lp in zip(tasks, loop)]
    merge = [o["stage_seconds"].get("merge", 0.0) for o in tasks]
    demo = demo_steps * sum(loop) / steps / len(tasks)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"fixed_overhead_s": round(mean(fixed), 2), "merge_s": round(mean(merge), 2),
            "setup_s": round(mean(fixed) - mean(merge), 2), "demo_training_s": round(demo, 1),
            "fixed_overhead_frac": round(mean(fixed) / demo, 3),
            "setup_frac": round((mean(fixed) - mean(merge)) / demo, 3),
            "fixed_overhead_frac_of_task": round(sum(fixed) / sum(o["seconds"] for o in tasks), 3)}


class CpuByRole:
    """CPU seconds (user + system) each kind of process spent while a fleet ran, sampled every two
    seconds with psutil: the driver (this process: the fleet flow, Ray's driver), the Prefect API
    server (this process's child), Ray's workers (``ray::`` processes: the tasks), Ray's own
    processes (raylet, GCS, ...) and everything else on the machine (not the fleet: what else ran).
    A process that ends between two samples loses up to two seconds of its time. For Ray's workers it
    also keeps the share of their CPU spent outside their main thread (Ray's, Prefect's and
    MLflow's background threads: with one torch thread a task computes on the main thread), as
    ``ray workers: other threads``, a part of ``ray workers``.

    The sampler runs in the driver, so what it costs is charged to the driver and taken from the
    tasks: a process's role is settled once it is ``SETTLE_S`` old and its command line is not
    read again (walking the parents of the machine's ~80 processes at every sample cost ~50 ms
    of CPU a sample, 5 % of a core at one a second; now ~5 ms). ``driver: the sampling itself``
    reports what the sampling spent, a part of ``driver``."""

    SETTLE_S = 10.0  # a new Ray worker names itself ``ray::`` within its first seconds

    def __init__(self, interval: float = 2.0):
        import threading

        import psutil

        self._psutil, self.interval = psutil, interval
        self._first: dict[int, float] = {}  # pid -> CPU seconds at the first sample (0 if born later)
        self._last: dict[int, tuple[str, float]] = {}
        self._bg: dict[int, list[float]] = {}  # a worker's pid -> [first, last] CPU seconds of its other threads
        self._settled: set[int] = set()  # pids whose role is final
        self._cost = 0.0  # CPU seconds the sampling thread spent
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._sample(first=True)

    def _role(self, proc, me: int) -> str:
        if proc.pid == me:
            return "driver"
        cmd = " ".join(proc.cmdline() or [])
        if cmd.startswith("ray::") or "default_worker.py" in cmd:  # a worker before and after it names itself
            return "ray workers"
        try:
            parents = {p.pid for p in proc.parents()}
        except self._psutil.Error:
            parents = set()
        if me in parents:
            return "prefect server" if "uvicorn" in cmd else "ray system"
        return "other processes"

    def _sample(self, first: bool = False) -> None:
        me, now = os.getpid(), time.time()
        for proc in self._psutil.process_iter():  # the same objects each time: create_time is kept
            try:
                t = proc.cpu_times()
            except self._psutil.Error:
                continue
            role = self._last.get(proc.pid, ("other processes",))[0]
            if role == "other processes" and proc.pid not in self._settled:
                try:  # again until settled: a new process renames itself, and a process on its way
                    role = self._role(proc, me)  # out has lost its command line and its parents
                    if now - proc.create_time() > self.SETTLE_S:
                        self._settled.add(proc.pid)
                except self._psutil.Error:
                    continue
            self._first.setdefault(proc.pid, t.user + t.system if first else 0.0)
            self._last[proc.pid] = (role, t.user + t.system)
            if role == "ray workers":
                try:
                    bg = sum(th.user_time + th.system_time for th in proc.threads() if th.id != proc.pid)
                except self._psutil.Error:
                    continue
                self._bg.setdefault(proc.pid, [bg if first else 0.0, bg])[1] = bg

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            t0 = time.thread_time()
            self._sample()
            self._cost += time.thread_time() - t0

    def __enter__(self) -> "CpuByRole":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def seconds(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, (role, secs) in self._last.items():
            out[role] = out.get(role, 0.0) + max(0.0, secs - self._first[pid])
        if self._bg:
            out["ray workers: other threads"] = sum(max(0.0, last - first) for first, last in self._bg.values())
        out["driver: the sampling itself"] = self._cost  # a part of ``driver``
        return out


VARIANTS = {"local": {"runner": "local"},
            "ray_1x2": {"runner": "ray", "address": "", "num_cpus": 2},
            "ray_2x1": {"runner": "ray", "address": "", "num_cpus": 1},
            # one single-thread worker alone: a 1.5-CPU request fits once on the 2-CPU private
            # cluster, and its torch threads are int(1.5) = 1 (the ideal for two cores is twice this)
            "ray_1x1": {"runner": "ray", "address": "", "num_cpus": 1.5}}


def round_order(labels: list[str], rounds: int) -> list[str]:
    """The contenders' runs, in order: forwards in even rounds, backwards in odd ones (a b c, c b a,
    a b c, ...), so that a host whose speed drifts steadily over the run drifts on every
    contender's mean alike (two rounds centre them all on the same moment)."""
    return [lbl for r in range(rounds) for lbl in (labels if r % 2 == 0 else labels[::-1])]


def mean_runs(runs: list[dict]) -> dict:
    """One contender's figures over its rounds: the mean of each, the rate from the mean time."""
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    out = {k: round(sum(r[k] for r in runs) / len(runs), 3) for k in keys}
    out["seconds_by_round"] = [r["seconds"] for r in runs]
    out["cpu_share"] = {k: round(sum(r["cpu_share"].get(k, 0.0) for r in runs) / len(runs), 4)
                        for k in runs[0]["cpu_share"]}
    return out


def runners(smoke: bool, n_orch: int | None = None, only: str = "all", pick: list[str] | None = None,
            glue: tuple[str, ...] = GLUE, rounds: int = 1) -> dict:
    """``only``: ``all``, ``runners`` (the four contenders) or ``orchestration`` (the tiny fleet);
    ``pick``: only these contenders (``--variants ray_2x1,ray_1x1``: a second look at the scaling),
    with the ratios that they allow; ``glue``: only these GLUE tasks (``--glue rte``: a short look);
    ``rounds``: each contender this many times, in ``round_order``, its figures the means (each
    round's target ratios are reported too: ``by_round``)."""
    tmp = Path(tempfile.mkdtemp(prefix="peftops-bench-runners-"))
    from peftops.config import load_params

    demo_steps = load_params(None).train.steps  # the embedded (demo) budget
    if smoke:
        steps = 4
        params, names, n_orch = tiny_params(tmp, TASKS, steps), list(TASKS), n_orch or 16
    else:
        steps = 20
        params, names = real_params(tmp, steps, glue)
        n_orch = n_orch or 1000
    variants = {k: v for k, v in VARIANTS.items() if not pick or k in pick} if only != "orchestration" else {}
    runs: dict[str, list[dict]] = {}
    out: dict = {"smoke": smoke}
    with prefect_test_harness():
        from prefect.settings import PREFECT_API_URL

        os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()  # Ray workers use the same server
        for i, label in enumerate(round_order(list(variants), rounds)):
            cfg = variants[label]
            home = tmp / f"home-{label}-{i}"
            if smoke:
                make_snapshot(home)
            else:
                from peftops.model.snapshot import import_base
                import_base(params.base, home)
            t0 = time.perf_counter()
            with CpuByRole() as cpu:
                rep = fleet(methods=["lora"], home=str(home), params=params, fleet_cfg=cfg, max_concurrency=1)
            secs = time.perf_counter() - t0
            # what ran beside the tasks, as a share of the machine's CPU over the contender's run
            busy = {k: round(v / (secs * (os.cpu_count() or 1)), 4) for k, v in sorted(cpu.seconds().items())}
            run = {"seconds": round(secs, 1), **overheads(rep, steps, demo_steps), "cpu_share": busy}
            runs.setdefault(label, []).append(run)
            print(f"{label} (round {len(runs[label])}): {len(names)} tasks in {secs:.1f}s, {run}", flush=True)
        if variants:
            res = {k: mean_runs(v) for k, v in runs.items()}
            for v in res.values():
                v["seconds"] = round(v["seconds"], 1)
                v["adapters_per_h"] = round(len(names) * 3600 / v["seconds"], 1)
            rate = {k: v["adapters_per_h"] for k, v in res.items()}
            out.update({"tasks": len(names), "rounds": rounds, **{f"{k}_adapters_per_h": r for k, r in rate.items()}})
            ratios = {"ray_2x1_vs_local": ("ray_2x1", "local", 1), "ray_2x1_vs_1x2": ("ray_2x1", "ray_1x2", 1),
                      "ray_2x1_vs_ideal": ("ray_2x1", "ray_1x1", 2)}
            for key, (num, den, times) in ratios.items():
                if num in rate and den in rate:
                    out[key] = round(rate[num] / (times * rate[den]), 3)
                    if rounds > 1:  # a ratio's spread over the rounds: seconds are rates' inverses
                        out.setdefault("by_round", {})[key] = [
                            round(d["seconds"] / (times * n["seconds"]), 3) for n, d in zip(runs[num], runs[den])]
            out.update({"seconds": {k: v["seconds"] for k, v in res.items()},
                        **({"seconds_by_round": {k: v["seconds_by_round"] for k, v in res.items()}} if rounds > 1 else {}),
                        **{key: {k: v[key] for k, v in res.items()} for key in (
                            "fixed_overhead_s", "merge_s", "setup_s", "demo_training_s", "fixed_overhead_frac",
                            "setup_frac", "fixed_overhead_frac_of_task", "cpu_share")}})
        if only == "runners":
            return out
        orch_names = [f"o{i:04d}" for i in range(n_orch)]
        orch = tiny_params(tmp, orch_names, 1)
        home = tmp / "home-orch"
        make_snapshot(home)
        t0 = time.perf_counter()
        with CpuByRole() as cpu:
            rep = fleet(methods=["lora"], home=str(home), params=orch, fleet_cfg=VARIANTS["ray_2x1"])
        secs = time.perf_counter() - t0
        stages: dict[str, float] = {}
        for o in rep["tasks"].values():
            for k, v in o["stage_seconds"].items():
                stages[k] = stages.get(k, 0.0) + v
        task_s = sum(o["seconds"] for o in rep["tasks"].values())
        breakdown = {k: round(v / n_orch, 3) for k, v in stages.items()}
        breakdown["other (flow run, MLflow runs, Ray)"] = round((task_s - sum(stages.values())) / n_orch, 3)
        cpu_s = {k: round(v / n_orch, 3) for k, v in sorted(cpu.seconds().items())}
        # 503s a worker answered by asking again soon (flows.ray_fleet.Retry503), per task
        retried = sum(o.get("worker", {}).get("api_503_retries", 0) for o in rep["tasks"].values())
        print(f"orchestration: {n_orch} one-step tiny tasks in {secs:.1f}s; per task {breakdown}; "
              f"CPU seconds per task by process {cpu_s}; Prefect API 503s retried {retried}", flush=True)
    out.update({"orchestration_tasks": n_orch, f"orchestration_s_per_task_{n_orch}": round(secs / n_orch, 3),
                "orchestration_breakdown_s": breakdown,  # at the default size: orchestration_s_per_task_1000
                "orchestration_cpu_s_per_task": cpu_s, "orchestration_api_503_retries": retried,
                # the fleet flow's wall time before its first task starts (pinning the base, one MLflow
                # experiment per task), of the measured total
                "orchestration_setup_s": round(secs - rep["seconds"], 1)})
    return out


def probe_prefect(n: int = 40) -> None:
    """What the Prefect side of a fleet task costs, on the server of ``prefect_test_harness``: ``n``
    flow runs (named, tagged and without heartbeats, as a fleet task's) of 0 or 6 trivial task
    runs, each flow run opening its own client as Prefect's engine does, or all sharing one
    (``flows.ray_fleet.worker_client_context``, as a fleet worker's do). Prints per flow run: the
    wall time, this process's CPU seconds and the server process's CPU seconds (psutil)."""
    import contextlib

    import psutil
    from prefect import flow, tags, task
    from prefect.cache_policies import NO_CACHE

    from flows.fleet import task_flow_settings, untagged_task_runs
    from flows.ray_fleet import worker_client_context

    @task(cache_policy=NO_CACHE)
    def stage(i: int) -> int:
        return i

    @flow(flow_run_name="probe-{k}")
    def pipeline(k: int, stages: int) -> int:
        with untagged_task_runs():
            for i in range(stages):
                stage(i)
        return k

    with prefect_test_harness():
        from prefect.settings import PREFECT_API_URL

        os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()
        server = next(c for c in psutil.Process().children(recursive=True) if "uvicorn" in " ".join(c.cmdline()))
        pipeline(0, 1)
        for stages in (0, 6):
            for shared in (False, True):
                time.sleep(3)  # the server has recorded what came before
                s0, c0, t0 = server.cpu_times(), time.process_time(), time.perf_counter()
                for k in range(n):
                    with tags("fleet", f"task:{k}"), task_flow_settings(), \
                            (worker_client_context() if shared else contextlib.nullcontext()):
                        pipeline(k, stages)
                wall = time.perf_counter() - t0
                time.sleep(3)  # and what these runs sent (task runs arrive as events)
                s1, c1 = server.cpu_times(), time.process_time()
                srv = (s1.user + s1.system) - (s0.user + s0.system)
                print(f"{stages} task runs, {'one client' if shared else 'a client per flow run'}: "
                      f"{wall / n * 1000:.0f} ms wall, {(c1 - c0) / n * 1000:.0f} ms CPU here, "
                      f"{srv / n * 1000:.0f} ms server CPU per flow run", flush=True)


def probe_mlflow(n: int = 20) -> None:
    """The MLflow store calls of a fleet task: ``n`` one-step tiny tasks through the local runner
    (one process, so every call is seen), each call of MLflow's SQLAlchemy store counted with the
    CPU time of the thread that made it (calls the store makes to itself are not counted twice).
    Prints, per task, the calls and their CPU milliseconds, by store method."""
    import collections
    import threading

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    calls: collections.Counter = collections.Counter()
    cpu_ms: collections.Counter = collections.Counter()
    inside = threading.local()

    def counted(name: str, fn):
        def call(*a, **k):
            if getattr(inside, "depth", 0):
                return fn(*a, **k)
            inside.depth, t0 = 1, time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                inside.depth = 0
                calls[name] += 1
                cpu_ms[name] += (time.thread_time() - t0) * 1000
        return call

    for name in [m for m in vars(SqlAlchemyStore) if not m.startswith("_")]:
        if callable(getattr(SqlAlchemyStore, name)):
            setattr(SqlAlchemyStore, name, counted(name, getattr(SqlAlchemyStore, name)))
    tmp = Path(tempfile.mkdtemp(prefix="peftops-bench-mlflow-"))
    params = tiny_params(tmp, [f"m{i:03d}" for i in range(n)], 1)
    make_snapshot(tmp / "home")
    with prefect_test_harness():
        fleet(methods=["lora"], home=str(tmp / "home"), params=params)
    print(f"MLflow store calls per task: {sum(calls.values()) / n:.2f}, "
          f"{sum(cpu_ms.values()) / n:.1f} ms of CPU", flush=True)
    for name, k in calls.most_common():
        print(f"  {name:28s} {k / n:5.2f} calls {cpu_ms[name] / n:6.2f} ms", flush=True)


def probe_gc() -> None:
    """``gc.get_freeze_count()`` in a process that holds what a fleet worker imports, frozen."""
    import gc

    import mlflow  # noqa: F401
    import peft  # noqa: F401
    import prefect  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    gc.collect()
    gc.freeze()
    t0 = time.perf_counter()
    count = [gc.get_freeze_count() for _ in range(10)][-1]
    print(f"gc.get_freeze_count() = {count}: {(time.perf_counter() - t0) / 10 * 1000:.1f} ms a call")


def main(concurrency: list[int]) -> None:
    """Print one line per concurrency: cold fleet time and unchanged-rerun time."""
    tmp = Path(tempfile.mkdtemp(prefix="peftops-bench-fleet-"))
    params = tiny_params(tmp, TASKS, 12)
    with prefect_test_harness():
        for n in concurrency:
            home = tmp / f"home-{n}"
            make_snapshot(home)
            t0 = time.perf_counter()
            fleet(methods=["lora"], home=str(home), params=params, max_concurrency=n)
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            fleet(methods=["lora"], home=str(home), params=params, max_concurrency=n)
            print(f"max_concurrency={n}: {len(TASKS)} tasks trained in {cold:.1f}s; "
                  f"unchanged rerun {time.perf_counter() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:2] == ["--probe", "prefect"]:
        probe_prefect(*[int(a) for a in args[2:3]])
    elif args[:2] == ["--probe", "mlflow"]:
        probe_mlflow(*[int(a) for a in args[2:3]])
    elif args[:2] == ["--probe", "gc"]:
        probe_gc()
    elif "--runners" in args:
        def opt(name: str, default=None):
            return args[args.index(name) + 1] if name in args else default

        n = opt("--orch-tasks")
        pick = opt("--variants")
        print(json.dumps(runners("--smoke" in args, int(n) if n else None, opt("--only", "all"),
                                 pick.split(",") if pick else None, tuple(opt("--glue", ",".join(GLUE)).split(",")),
                                 int(opt("--rounds", 1)))))
    else:
        main([int(a) for a in args] or [1, 2])
