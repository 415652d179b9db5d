"""The stage commands: ``base import|verify``, ``prepare``, ``train``, ``evaluate``, ``merge``,
``publish``; each a thin wrapper over one ``peftops.stages`` function."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from peftops.cli.common import (HomeOpt, ManifestOpt, ParamsOpt, TaskOpt, console, emit, err_console, load_cli_params,
                                method_option, user_errors)

app = typer.Typer()
base_app = typer.Typer(help="The pinned base model.", no_args_is_help=True)


@base_app.command("import")
@user_errors
def base_import(params: Optional[Path] = ParamsOpt, home: Optional[Path] = HomeOpt,
                force: bool = typer.Option(False, help="rebuild even if a snapshot exists")) -> None:
    """Build the pinned safetensors snapshot from the GGUF package (once) and verify it."""
    from peftops.stages import stage_base

    snap = stage_base(load_cli_params(params), home, force=force)
    console.print(f"base {snap.name} at {snap.path}\ndigest {snap.digest}")


@base_app.command("verify")
@user_errors
def base_verify(params: Optional[Path] = ParamsOpt, home: Optional[Path] = HomeOpt) -> None:
    """Re-hash every snapshot file and compare with the manifest."""
    from peftops.model.snapshot import open_snapshot
    from peftops.stages import Layout

    p = load_cli_params(params)
    snap = open_snapshot(Layout.of(home).base(p.base.name), p.base.expected_digest)
    console.print(f"ok: {snap.path} digest {snap.digest}")


@app.command()
@user_errors
def prepare(params: Optional[Path] = ParamsOpt, home: Optional[Path] = HomeOpt, task: Optional[str] = TaskOpt,
            manifest: Optional[Path] = ManifestOpt) -> None:
    """Parse, subsample and tokenize the task's train and dev splits."""
    from peftops.stages import stage_prepare

    out = stage_prepare(load_cli_params(params, task, manifest), home)
    console.print(f"prepared {out.task}: train {out.train_size}, dev {out.dev_size}, digest {out.digest[:16]}…")


@app.command()
@user_errors
def train(method: str = method_option(help="the PEFT method to train"), params: Optional[Path] = ParamsOpt,
          home: Optional[Path] = HomeOpt, task: Optional[str] = TaskOpt, manifest: Optional[Path] = ManifestOpt,
          resume: bool = typer.Option(True, help="resume from the last checkpoint"),
          as_json: bool = typer.Option(False, "--json", help="print the result as JSON")) -> None:
    """Train one method on the prepared train split."""
    from peftops.stages import stage_train

    r = stage_train(load_cli_params(params, task, manifest), method, home, resume=resume, progress=not as_json)
    out = r.to_dict()
    out.pop("history")
    out.pop("trained_names")
    emit(out, as_json)


@app.command()
@user_errors
def evaluate(method: Optional[str] = method_option(None, help="the trained method to score; omit for the base model"),
             params: Optional[Path] = ParamsOpt, home: Optional[Path] = HomeOpt, task: Optional[str] = TaskOpt,
             manifest: Optional[Path] = ManifestOpt,
             as_json: bool = typer.Option(False, "--json", help="print the result as JSON")) -> None:
    """Score the base model or a trained adapter on the dev split."""
    from peftops.stages import stage_evaluate

    emit(stage_evaluate(load_cli_params(params, task, manifest), method, home).to_dict(), as_json)


@app.command()
@user_errors
def merge(method: str = method_option(help="the trained method to merge (lora or bitfit)"),
          params: Optional[Path] = ParamsOpt, home: Optional[Path] = HomeOpt, task: Optional[str] = TaskOpt,
          manifest: Optional[Path] = ManifestOpt,
          export: Optional[Path] = typer.Option(None, help="write the merged model here (safetensors)"),
          dtype: str = typer.Option("fp32", "--dtype", help="dtype of the exported weights: fp32 (default) or "
                                    "bf16; the weights are folded in fp32 either way"),
          as_json: bool = typer.Option(False, "--json", help="print the result as JSON")) -> None:
    """Merge the adapter into the base weights, refusing above the parity tolerance."""
    from peftops.errors import ConfigError
    from peftops.stages import stage_merge

    if dtype not in ("fp32", "bf16"):
        raise ConfigError("--dtype", f"{dtype!r} is not one of fp32, bf16")
    emit(stage_merge(load_cli_params(params, task, manifest), home, method, export, export_dtype=dtype).to_dict(),
         as_json)


@app.command()
@user_errors
def publish(method: str = method_option(help="the trained method to publish"), params: Optional[Path] = ParamsOpt,
            home: Optional[Path] = HomeOpt, task: Optional[str] = TaskOpt, manifest: Optional[Path] = ManifestOpt,
            alias: list[str] = typer.Option([], help="alias to set, repeatable"),
            promote: bool = typer.Option(False, help="set the gate's alias (production) if the score is >= "
                                                     "gate.min_pct_of_full % of FFT's; else record why not"),
            min_pct: Optional[float] = typer.Option(None, help="override gate.min_pct_of_full"),
            as_json: bool = typer.Option(False, "--json", help="print the result as JSON")) -> None:
    """Publish the trained adapter (PEFT format) to the registry against the pinned base."""
    import dataclasses

    from peftops.errors import ConfigError
    from peftops.stages import Layout, stage_publish

    p = load_cli_params(params, task, manifest)
    if p.gate.alias in alias:
        raise ConfigError("alias", f"{p.gate.alias!r} is set by the quality gate only; use --promote")
    run = Layout.of(home).run(p.data.task, method)
    ev = run / "eval.json"
    metrics = {}
    if ev.exists():
        metrics = {f"dev_{k}": v for k, v in json.loads(ev.read_text())["metrics"].items()}
    if promote:
        from peftops.pipeline.gate import publish_gated

        v, decision = publish_gated(p, home, method, min_pct=min_pct)
        (err_console if as_json else console).print(f"gate: {decision.reason}")
        if alias:
            from registry import Registry

            from peftops.stages import registry_locations

            with Registry.open(**registry_locations(home)) as reg:
                for a in alias:
                    v = reg.set_alias(v.task, a, v.version)
    else:
        v = stage_publish(p, home, method, metrics=metrics, aliases=alias)
    emit(dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v, as_json)
