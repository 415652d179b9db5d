"""MLflow tracking: the only module that imports mlflow.

Default store: ``sqlite:///<state>/mlflow/mlflow.db`` with artifacts under
``<state>/mlflow/artifacts``; look at it with ``mlflow ui --backend-store-uri <that uri>``.
A pipeline opens one parent run and a child run per method; step metrics go in one
``log_batch`` call per run (one call per step is ~10x slower on SQLite).

Optionally (``tracking.mirror_registry``, or ``peftops mlflow-mirror`` at any time) our
registry's versions are mirrored into MLflow's Model Registry, one registered model
``peftops-<task>`` per task (:meth:`Tracker.mirror_to_model_registry`). Our registry stays the
source of truth: the mirror only ever writes to MLflow.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from peftops.config import state_home
from peftops.errors import MirrorError

# What the mirror tags each MLflow model version with (peftops.version finds it again).
MIRROR_TAGS = ("peftops.task", "peftops.version", "peftops.adapter_id", "peftops.base_digest")
# Ids and names the mirror puts in MLflow filter strings: nothing that could end the quoted value.
_FILTER_SAFE = re.compile(r"[A-Za-z0-9._:-]{1,200}")


def default_tracking_uri(home: str | Path | None = None) -> str:
    """$MLFLOW_TRACKING_URI, else a SQLite file in the state directory."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    path = state_home(home) / "mlflow" / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _flat(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


_BATCH_LIMITS = {"metrics": 1000, "params": 100, "tags": 100}  # MLflow's per-call maxima
_BATCH_TOTAL = 1000  # and of the three together
_NOTE = "mlflow.note.content"  # the experiment's description


def _artifact_repo(uri: str, tracking_uri: str) -> Any:
    """MLflow's artifact repository for an artifact root, as ``MlflowClient`` builds it."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.utils.uri import add_databricks_profile_info_to_artifact_uri

    return get_artifact_repository(add_databricks_profile_info_to_artifact_uri(uri, tracking_uri),
                                   tracking_uri=tracking_uri)


@dataclass
class _Held:
    """What a ``hold=True`` run keeps back: metrics, params and tags by key, files and tables,
    and the params already written (a param may be logged again only with the same value)."""

    metrics: list[Any] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, Any] = field(default_factory=dict)
    written: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # artifact path -> bytes
    inputs: list[Any] = field(default_factory=list)  # datasets
    tables: dict[str, dict[str, list]] = field(default_factory=dict)  # artifact path -> columns, data


class Tracker:
    """A thin handle over one MLflow experiment."""

    def __init__(self, experiment: str = "peftops", tracking_uri: str | None = None,
                 home: str | Path | None = None, description: str | None = None):
        """``description``: the experiment's description when this call creates it (in the
        same store call; an existing experiment's is changed only by :meth:`describe_experiment`)."""
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri or default_tracking_uri(home)
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        self._description = (exp.tags or {}).get(_NOTE) if exp is not None else None
        self._held: dict[str, _Held] = {}  # run id -> what hold=True keeps back until the run ends
        self._lingering: dict[str, tuple[str, str, int]] = {}  # run id -> parent id, outcome, end time (ms)
        self._artifact_uris: dict[str, str] = {}  # run id -> its artifact root (known at create_run)
        if exp is None:
            artifacts = None
            if self.tracking_uri.startswith("sqlite:///"):
                root = Path(self.tracking_uri[len("sqlite:///"):]).parent / "artifacts"
                artifacts = root.resolve().as_uri()
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=artifacts, tags={_NOTE: description} if description else None)
            self._description = description
        else:
            self.experiment_id = exp.experiment_id
        self.experiment = experiment

    @contextlib.contextmanager
    def run(self, name: str, params: dict[str, Any] | None = None, tags: dict[str, str] | None = None,
            parent_id: str | None = None, hold: bool = False, linger: bool = False) -> Iterator[str]:
        """Open a run (a child run when ``parent_id`` is given); ends FAILED on an exception.

        ``hold``: after its params (written at once, so a running run shows them), the run's
        metrics, params and tags are kept in this process and written in one ``log_batch`` when
        the run ends, or at :meth:`flush`, its files (``log_artifact``, ``log_json``,
        ``log_text``, ``log_table``) in one ``log_artifacts`` and its datasets in one
        ``log_inputs``. Each would otherwise be a store call of its own (a SQLite commit, or a
        request to a tracking server), and a fleet pays them for every task.
        Step metrics (:meth:`step_logger`) are never held. On an exception what was held is
        still written before the run is marked FAILED.

        ``linger`` (a held child run): when the block ends without an error, the run's outcome
        and end time are fixed there, but what it holds and its end are written when its parent
        run ends, so that what is logged to it after the block (a publish's gate decision and
        registry version) joins the same batch instead of costing store calls of its own. An
        error in the parent after the block does not change the child's outcome."""
        if linger and not (hold and parent_id):
            raise ValueError("linger applies to a held child run (hold=True and a parent_id)")
        all_tags = dict(tags or {})
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        run_id = run.info.run_id
        self._artifact_uris[run_id] = run.info.artifact_uri
        flat = _flat(params or {})
        if flat:
            self._log_param_items(run_id, flat)
        if hold:
            self._held[run_id] = _Held(written=flat)
        try:
            yield run_id
        except BaseException:
            with contextlib.suppress(Exception):  # the run's own error is the one to raise
                self._end_lingering(run_id)
            self._end(run_id, "FAILED", quiet=True)
            raise
        if linger:
            self._lingering[run_id] = (parent_id, "FINISHED", int(time.time() * 1000))
            return
        try:
            self._end_lingering(run_id)
        except BaseException:
            self._end(run_id, "FAILED", quiet=True)
            raise
        self._end(run_id, "FINISHED")

    def _end(self, run_id: str, status: str, end_time: int | None = None, quiet: bool = False) -> None:
        """Write what ``run_id`` holds, then mark it ended. ``quiet``: a failure to write what it
        holds is not raised (an error already on its way out is the one to report)."""
        try:
            self.flush(run_id)
        except Exception:
            if not quiet:
                self._drop(run_id)
                self.client.set_terminated(run_id, status="FAILED", end_time=end_time)
                raise
        self._drop(run_id)
        self.client.set_terminated(run_id, status=status, end_time=end_time)

    def _drop(self, run_id: str) -> None:
        self._held.pop(run_id, None)
        self._artifact_uris.pop(run_id, None)

    def _end_lingering(self, parent_id: str) -> None:
        """End the child runs of ``parent_id`` that linger, each with the outcome and end time
        its own block fixed (all of them, then the first failure to write one is raised)."""
        first: BaseException | None = None
        for child, (parent, status, end_time) in list(self._lingering.items()):
            if parent == parent_id:
                del self._lingering[child]
                try:
                    self._end(child, status, end_time)
                except Exception as err:
                    first = first or err
        if first is not None:
            raise first

    def flush(self, run_id: str) -> None:
        """Write what a ``hold=True`` run has kept back: its files in one ``log_artifacts``, its
        datasets in one ``log_inputs``, the rest in as few ``log_batch`` calls as MLflow's per-call
        limits allow (one, for a pipeline's run). Tables held since an earlier flush are written
        whole again (a table logged twice is one table, as MLflow appends)."""
        held = self._held.get(run_id)
        if held is None:
            return
        if held.files:  # the files first: the tables' tag then never names a missing one
            with tempfile.TemporaryDirectory() as tmp:
                for name, data in held.files.items():
                    (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
                    (Path(tmp) / name).write_bytes(data)
                # into the root create_run returned (MlflowClient.log_artifacts would read the run again)
                _artifact_repo(self._artifact_uris[run_id], self.tracking_uri).log_artifacts(tmp)
            held.files.clear()
        if held.inputs:
            inputs, held.inputs = held.inputs, []
            self.client.log_inputs(run_id, inputs)
        if held.tables:
            from mlflow.entities import RunTag
            from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

            logged = [{"path": name, "type": "table"} for name in held.tables]
            held.tags[MLFLOW_LOGGED_ARTIFACTS] = RunTag(MLFLOW_LOGGED_ARTIFACTS, json.dumps(logged))
        metrics, params, tags = held.metrics, list(held.params.values()), list(held.tags.values())
        held.metrics, held.params, held.tags = [], {}, {}
        held.written.update((p.key, p.value) for p in params)
        while metrics or params or tags:
            p, params = params[:_BATCH_LIMITS["params"]], params[_BATCH_LIMITS["params"]:]
            t, tags = tags[:_BATCH_LIMITS["tags"]], tags[_BATCH_LIMITS["tags"]:]
            n = _BATCH_TOTAL - len(p) - len(t)
            m, metrics = metrics[:n], metrics[n:]
            self.client.log_batch(run_id, metrics=m, params=p, tags=t)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        self._log_param_items(run_id, _flat(params))

    def _log_param_items(self, run_id: str, flat: dict[str, str]) -> None:
        from mlflow.entities import Param

        self._log_batches(run_id, "params", [Param(k, v) for k, v in flat.items()])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._log_batches(run_id, "metrics",
                          [Metric(k, float(v), ts, step) for k, v in metrics.items() if v is not None])

    def log_history(self, run_id: str, history: list[dict[str, float]]) -> None:
        """Per-step metrics (each record has a 'step' key) in batched calls."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._log_batches(run_id, "metrics", [Metric(k, float(v), ts, int(rec["step"]))
                                              for rec in history for k, v in rec.items() if k != "step"])

    def step_logger(self, run_id: str, every: int = 10) -> "StepLogger":
        """A callback for the training loop that logs each step's metrics while the run trains."""
        return StepLogger(self, run_id, every)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        """All of ``tags`` in one ``log_batch`` call per hundred (one commit each, not one per tag)."""
        from mlflow.entities import RunTag

        self._log_batches(run_id, "tags", [RunTag(k, str(v)) for k, v in tags.items()])

    def _log_batches(self, run_id: str, kind: str, items: list[Any]) -> None:
        """``items`` (``kind``: metrics, params or tags) in as few ``log_batch`` calls as MLflow's
        per-call limits allow: one commit per call, not one per item. A held run keeps them
        (a tag set again keeps its last value, as MLflow would; a param logged again with
        another value is sent at once, so MLflow refuses it as it always has)."""
        held = self._held.get(run_id)
        if held is not None:
            if kind == "metrics":
                held.metrics.extend(items)
                return
            if kind == "tags":
                held.tags.update((i.key, i) for i in items)
                return
            known = {**held.written, **{k: p.value for k, p in held.params.items()}}
            if all(known.get(i.key, i.value) == i.value for i in items):
                held.params.update((i.key, i) for i in items if i.key not in held.written)
                return
            self.flush(run_id)
        size = _BATCH_LIMITS[kind]
        for start in range(0, len(items), size):
            self.client.log_batch(run_id, **{kind: items[start:start + size]})

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        """A file, as it is now (a held run keeps its bytes: the file may change before the run ends)."""
        held = self._held.get(run_id)
        if held is None:
            self.client.log_artifact(run_id, str(path), artifact_path)
        else:
            held.files[posixpath.join(artifact_path or "", Path(path).name)] = Path(path).read_bytes()

    def log_json(self, run_id: str, obj: Any, name: str) -> None:
        self.log_text(run_id, json.dumps(obj, indent=2, sort_keys=True, default=str), name)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        held = self._held.get(run_id)
        if held is not None:
            held.files[name] = text.encode()
            return
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / name
            p.write_text(text)
            self.client.log_artifact(run_id, str(p))

    def describe_experiment(self, text: str) -> None:
        """The experiment's description (shown on its page in the MLflow UI); not written again
        when the experiment already has it (every task of a fleet describes its experiment)."""
        if text != self._description:
            self.client.set_experiment_tag(self.experiment_id, _NOTE, text)
            self._description = text

    def log_dataset(self, run_id: str, name: str, digest: str, source: str, context: str,
                    profile: dict[str, Any] | None = None) -> None:
        """Record a dataset the run used (``context``: training or evaluation): our content digest
        (MLflow's field holds 36 characters; the full digest goes in the profile), where it came from."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        hexdigest = digest.split(":", 1)[-1]
        ds = Dataset(name=name, digest=hexdigest[:36], source_type="local", source=json.dumps({"uri": source}),
                     profile=json.dumps({"digest": digest, **(profile or {})}, default=str))
        record = DatasetInput(ds, [InputTag("mlflow.data.context", context)])
        held = self._held.get(run_id)
        if held is None:
            self.client.log_inputs(run_id, [record])
        else:
            held.inputs.append(record)

    @contextlib.contextmanager
    def system_metrics(self, run_id: str, interval_s: float | None = None) -> Iterator[None]:
        """MLflow's own system metrics (CPU, memory, disk, network; GPU where present) for the block."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        interval = interval_s or float(os.environ.get("PEFTOPS_SYSTEM_METRICS_INTERVAL", "5"))
        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, samples_before_logging=1,
                                       tracking_uri=self.tracking_uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()

    def log_model(self, run_id: str, name: str, local_dir: str | Path, params: dict[str, Any] | None = None,
                  tags: dict[str, str] | None = None, model_type: str = "peft-adapter") -> str:
        """Log ``local_dir`` as a model of the run (MLflow 3's logged models); returns its model id."""
        from mlflow.entities import LoggedModelOutput

        model = self.client.create_logged_model(self.experiment_id, name=name, source_run_id=run_id,
                                                tags=tags, params=_flat(params or {}), model_type=model_type)
        try:  # into the root create_logged_model returned (log_model_artifacts would read the model again)
            _artifact_repo(model.artifact_location, self.tracking_uri).log_artifacts(str(local_dir))
        except BaseException:
            self.client.finalize_logged_model(model.model_id, "FAILED")
            raise
        self.client.finalize_logged_model(model.model_id, "READY")
        self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        return model.model_id

    def log_table(self, run_id: str, rows: list[dict[str, Any]], name: str) -> None:
        """A table artifact (one column per key) that the MLflow UI renders and compares across runs."""
        columns: dict[str, list[Any]] = {}
        for row in rows:
            for k in row:
                columns.setdefault(k, [])
        for row in rows:
            for k, col in columns.items():
                v = row.get(k)
                col.append(v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v, default=str))
        held = self._held.get(run_id)
        if held is None:
            self.client.log_table(run_id, columns, name)
            return
        # Held: the artifact MLflow's log_table writes (pandas' "split" JSON) and its tag, written
        # with the run's other records; its own call reads the run and lists its artifacts first.
        table = held.tables.setdefault(name, {"columns": [], "data": []})
        new = [k for k in columns if k not in table["columns"]]
        table["columns"] += new
        for row in table["data"]:
            row += [None] * len(new)  # rows of an earlier call, as MLflow appends a table
        table["data"] += [[columns[k][i] if k in columns else None for k in table["columns"]]
                          for i in range(len(rows))]
        held.files[name] = json.dumps(table, default=str).encode()

    def log_figure(self, run_id: str, figure: Any, name: str) -> None:
        self.client.log_figure(run_id, figure, name)

    def ui_command(self) -> str:
        return f"mlflow ui --backend-store-uri {self.tracking_uri}"

    def mirror_to_model_registry(self, task: str, versions: Sequence[MirrorVersion]) -> MirrorReport:
        """Make MLflow's Model Registry match our registry for ``task``.

        ``versions``: every version of the task in our registry (one left out counts as
        deleted). The registered model is :func:`registered_model_name` (``peftops-<task>``);
        each of our versions is one MLflow model version, tagged :data:`MIRROR_TAGS` and made
        from the logged model of the run that trained it (else from the files ``fetch``
        writes, logged under a run ``registry-<task>-v<N>`` of this tracker's experiment).
        Aliases become exactly ours. Idempotent: a second call changes nothing. MLflow
        versions of the model that carry no ``peftops.version`` tag are left alone.

        Raises :class:`MirrorError` (with ``.report``) after doing all it could, when a
        version could not be mirrored or already mirrors other content.
        """
        name = registered_model_name(task)
        if not _FILTER_SAFE.fullmatch(name):
            raise MirrorError(f"cannot mirror task {task!r}: not a usable MLflow model name")
        self._ensure_registered_model(name, task)
        mirrored, stale = self._mirrored_versions(name, task)
        report, problems = MirrorReport(name), []
        ours = {v.version: v for v in versions}
        for v in sorted(ours.values(), key=lambda x: x.version):
            want = _mirror_tags(task, v)
            mv = mirrored.get(v.version)
            if mv is None:
                try:
                    mv = mirrored[v.version] = self._create_mirror_version(name, task, v, want)
                except Exception as err:  # the others are still mirrored; reported at the end
                    problems.append(f"v{v.version}: {err}")
                    continue
                report.created.append(v.version)
            elif mv.tags.get("peftops.adapter_id") != v.adapter_id:
                problems.append(f"v{v.version}: MLflow version {mv.version} of {name} holds adapter "
                                f"{mv.tags.get('peftops.adapter_id')}, ours is {v.adapter_id} (does "
                                "another registry mirror into this MLflow store?); left as it is")
                del mirrored[v.version]
                continue
            else:
                for key, value in want.items():  # the status (deprecated) can change
                    if mv.tags.get(key) != value:
                        self.client.set_model_version_tag(name, mv.version, key, value)
        stale += [mv for n, mv in mirrored.items() if n not in ours]
        wanted = {}
        for v in ours.values():
            for alias in v.aliases:
                if v.version in mirrored:
                    wanted[alias] = (v.version, str(mirrored[v.version].version))
                else:
                    problems.append(f"alias {alias!r}: v{v.version} is not mirrored; removed in MLflow")
        have = {a: str(mv) for a, mv in (self.client.get_registered_model(name).aliases or {}).items()}
        for alias in sorted(set(have) - set(wanted)):
            self.client.delete_registered_model_alias(name, alias)
            report.aliases_deleted.append(alias)
        for alias, (version, mlflow_version) in sorted(wanted.items()):
            if have.get(alias) != mlflow_version:
                self.client.set_registered_model_alias(name, alias, mlflow_version)
            report.aliases[alias] = version
        for mv in stale:  # after the aliases: deleting a version would drop its aliases too
            self.client.delete_model_version(name, mv.version)
            report.removed.append(int(mv.tags["peftops.version"]))
        if problems:
            err = MirrorError(f"{name}: " + "; ".join(problems))
            err.report = report  # type: ignore[attr-defined]
            raise err
        return report

    def _ensure_registered_model(self, name: str, task: str) -> None:
        try:
            self.client.get_registered_model(name)
            return
        except Exception as err:
            if _code(err) != "RESOURCE_DOES_NOT_EXIST":
                raise
        try:
            self.client.create_registered_model(
                name, tags={"peftops.task": task},
                description=f"Mirror of the peftops registry's task `{task}`: one version per registry "
                            "version, aliases as the registry has them. The peftops registry is the source "
                            "of truth; `peftops mlflow-mirror` resyncs this model.")
        except Exception as err:  # a concurrent mirror created it first
            if _code(err) != "RESOURCE_ALREADY_EXISTS":
                raise

    def _mirrored_versions(self, name: str, task: str) -> tuple[dict[int, Any], list[Any]]:
        """The MLflow versions the mirror made, by our version number; and the duplicates a
        concurrent mirror left (the lowest MLflow version of each of ours is kept)."""
        found: dict[int, Any] = {}
        stale: list[Any] = []
        token = None
        while True:
            page = self.client.search_model_versions(f"name = '{name}'", page_token=token)
            for mv in page:
                ours = (mv.tags or {}).get("peftops.version", "")
                if not ours.isdigit() or mv.tags.get("peftops.task") != task:
                    continue  # not the mirror's
                keep = found.setdefault(int(ours), mv)
                if keep is not mv:
                    lo, hi = sorted((keep, mv), key=lambda m: int(m.version))
                    found[int(ours)] = lo
                    stale.append(hi)
            token = page.token
            if not token:
                return found, stale

    def _create_mirror_version(self, name: str, task: str, v: MirrorVersion, tags: dict[str, str]) -> Any:
        model = self._logged_model_of(v) or self._log_from_registry(task, v)
        # The model's storage location, not models:/<id>: MLflow's SQL registry store resolves
        # that URI against the process-wide tracking URI rather than this client's.
        return self.client.create_model_version(
            name, model.artifact_location, run_id=model.source_run_id,
            tags={**tags, "peftops.mlflow_model_id": model.model_id},
            model_id=model.model_id if model.source_run_id else None,
            description=f"peftops registry {task} v{v.version} ({v.method or 'adapter'}, adapter "
                        f"{v.adapter_id[:16]}...)")

    def _logged_model_of(self, v: MirrorVersion) -> Any:
        """The READY logged model of ``v`` in this store: its own id, else its training run's."""
        from mlflow.entities import LoggedModelStatus

        if v.model_id:
            try:
                model = self.client.get_logged_model(v.model_id)
                if model.status == LoggedModelStatus.READY:
                    return model
            except Exception as err:
                if _code(err) != "RESOURCE_DOES_NOT_EXIST":
                    raise
        if not v.run_id or not _FILTER_SAFE.fullmatch(v.run_id):
            return None
        try:
            run = self.client.get_run(v.run_id)
        except Exception as err:  # a run of another MLflow store (or since deleted)
            if _code(err) != "RESOURCE_DOES_NOT_EXIST":
                raise
            return None
        found = self.client.search_logged_models([run.info.experiment_id],
                                                 filter_string=f"source_run_id = '{v.run_id}'")
        ready = [m for m in found if m.status == LoggedModelStatus.READY]
        return max(ready, key=lambda m: m.creation_timestamp) if ready else None

    def _log_from_registry(self, task: str, v: MirrorVersion) -> Any:
        """Log ``v``'s files (from our registry) as a model of a run of its own: for versions
        published without a run of this MLflow store (``peftops publish``, another server)."""
        from mlflow.entities import LoggedModelStatus

        if v.fetch is None:
            raise MirrorError(f"no logged model of {task} v{v.version} in this MLflow store and no files to log")
        if _FILTER_SAFE.fullmatch(v.adapter_id):  # logged by an earlier mirror that stopped short
            found = self.client.search_logged_models(
                [self.experiment_id], filter_string=f"tags.`peftops.adapter_id` = '{v.adapter_id}'")
            ready = [m for m in found if m.status == LoggedModelStatus.READY and m.source_run_id]
            if ready:
                return ready[0]
        with self.run(f"registry-{task}-v{v.version}",
                      tags={"task": task, "peftops.mirror": "true", "registry.version": str(v.version),
                            "registry.adapter_id": v.adapter_id}) as run_id, \
                tempfile.TemporaryDirectory(prefix="peftops-mirror-") as tmp:
            folder = Path(tmp) / "adapter"
            v.fetch(folder)
            model_id = self.log_model(run_id, f"{task}-v{v.version}", folder,
                                      params={"method": v.method} if v.method else None,
                                      tags={"task": task, "base_digest": v.base_digest,
                                            "peftops.adapter_id": v.adapter_id})
        return self.client.get_logged_model(model_id)


def registered_model_name(task: str) -> str:
    """The MLflow registered model that mirrors our registry's ``task``: ``peftops-<task>``."""
    return f"peftops-{task}"


@dataclass(frozen=True)
class MirrorVersion:
    """One version of our registry as the mirror needs it (plain data: tracking reads no
    registry). ``run_id`` / ``model_id``: the MLflow run that trained it and its logged model
    (the version's lineage); ``fetch(dest)`` writes its files into the folder ``dest``, for
    when this MLflow store has no logged model of it."""

    version: int
    adapter_id: str
    base_digest: str
    method: str = ""
    status: str = "active"
    aliases: tuple[str, ...] = ()
    run_id: str | None = None
    model_id: str | None = None
    fetch: Callable[[Path], Any] | None = field(default=None, compare=False, repr=False)


@dataclass
class MirrorReport:
    """What one mirror call changed in MLflow (version numbers are ours)."""

    model_name: str
    created: list[int] = field(default_factory=list)  # got an MLflow model version
    removed: list[int] = field(default_factory=list)  # gone from our registry: MLflow's copy deleted
    aliases: dict[str, int] = field(default_factory=dict)  # alias -> our version, as MLflow has it now
    aliases_deleted: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mirror_tags(task: str, v: MirrorVersion) -> dict[str, str]:
    return {"peftops.task": task, "peftops.version": str(v.version), "peftops.adapter_id": v.adapter_id,
            "peftops.base_digest": v.base_digest, "peftops.method": v.method, "peftops.status": v.status}


def _code(err: BaseException) -> str:
    """MLflow's error code of ``err`` (RESOURCE_DOES_NOT_EXIST, ...), '' for other errors."""
    return str(getattr(err, "error_code", "") or "")


class StepLogger:
    """Per-step metrics, logged while training runs: buffered and sent every ``every`` steps by a
    background thread (one ``log_batch`` call per flush), so a step never waits on the store.
    Each metric keeps the time of its own step. Use as a context manager; ``steps`` counts what it saw."""

    def __init__(self, tracker: Tracker, run_id: str, every: int = 10):
        from concurrent.futures import ThreadPoolExecutor

        self.tracker, self.run_id, self.every = tracker, run_id, max(1, every)
        self.steps = 0
        self._buffer: list[Any] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-steps")
        self._pending: list[Any] = []

    def __call__(self, step: int, record: dict[str, float]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._buffer += [Metric(k, float(v), ts, int(step)) for k, v in record.items() if k != "step"]
        self.steps += 1
        if self.steps % self.every == 0:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            batch, self._buffer = self._buffer, []
            self._pending.append(self._pool.submit(self.tracker.client.log_batch, self.run_id, metrics=batch))

    def __enter__(self) -> "StepLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._flush()
        self._pool.shutdown(wait=True)
        for f in self._pending:
            f.result()  # a failed flush is the run's error, not a silent gap
