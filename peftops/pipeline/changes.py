"""What changed since a git revision, and which tasks that affects (for ``peftops retrain``).

A task is affected when

* one of its data files changed: the file itself (when git tracks it) or a ``.dvc`` file that
  tracks it or a folder above it (when DVC does);
* its manifest entry was added or changed;
* a section of ``params.yaml`` that shapes training changed (``base``, ``data`` other than the
  default ``task``, ``train``, ``merge``, ``methods``): every task;
* a ``peftops`` module that shapes outputs changed (``peftops.pipeline.caching.affects_outputs``): every task.

:func:`affected_tasks` is the pure rule; :func:`affected_since` feeds it from git.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from peftops.config import load_yaml, parse_yaml
from peftops.pipeline.caching import affects_outputs
from peftops.errors import PeftopsError

PARAM_SECTIONS = ("base", "data", "train", "merge", "methods")


def _under(path: PurePosixPath, parent: PurePosixPath) -> bool:
    return path == parent or parent in path.parents


def affected_tasks(changed: Iterable[str], *, new_manifest: dict[str, dict[str, Any]],
                   old_manifest: dict[str, dict[str, Any]] | None = None,
                   manifest_path: str | None = None, new_params: dict[str, Any] | None = None,
                   old_params: dict[str, Any] | None = None, params_path: str | None = None,
                   data_dir: str | None = None, code_dir: str = "peftops") -> dict[str, list[str]]:
    """Map each affected task to the reasons it is affected.

    ``changed`` are repository-relative paths; manifests are the raw ``tasks`` mappings at the
    revision and now; ``data_dir`` is the data root relative to the repository (None when the
    data lives outside it, so its changes are not seen here).
    """
    changed = [PurePosixPath(p) for p in changed]
    tasks = sorted(new_manifest)
    reasons: dict[str, list[str]] = {}

    def hit(names: Iterable[str], why: str) -> None:
        for n in names:
            reasons.setdefault(n, [])
            if why not in reasons[n]:
                reasons[n].append(why)

    code = PurePosixPath(code_dir)
    for p in changed:
        if _under(p, code) and p != code and affects_outputs(str(p.relative_to(code))):
            hit(tasks, f"code: {p}")
    if params_path and PurePosixPath(params_path) in changed:
        old, new = old_params or {}, new_params or {}
        for section in PARAM_SECTIONS:
            a, b = dict(old.get(section) or {}), dict(new.get(section) or {})
            if section == "data":  # the default task of single-task commands does not shape a fleet
                a.pop("task", None)
                b.pop("task", None)
            if a != b:
                hit(tasks, f"params: {section}")
    if manifest_path and PurePosixPath(manifest_path) in changed:
        old = old_manifest or {}
        for t in tasks:
            if t not in old:
                hit([t], "manifest: new task")
            elif old[t] != new_manifest[t]:
                hit([t], "manifest: entry changed")
    if data_dir is not None:
        root = PurePosixPath(data_dir)
        for t in tasks:
            for split in ("train", "dev"):
                rel = new_manifest[t].get(split)
                if not rel or PurePosixPath(rel).is_absolute():
                    continue
                f = root / rel
                for p in changed:
                    if p == f or (p.suffix == ".dvc" and _under(f, p.with_suffix(""))):
                        hit([t], f"data: {p}")
    return {t: reasons[t] for t in sorted(reasons)}


# ---------------------------------------------------------------- from git


def _git(repo: Path, *args: str, check: bool = True) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if check and out.returncode != 0:
        raise PeftopsError(f"git {' '.join(args)}: {out.stderr.strip() or 'failed'}")
    return out.stdout if out.returncode == 0 else ""


def changed_files(since: str, repo: str | Path = ".") -> list[str]:
    """Files changed between ``since`` and the working tree (commits, staged, unstaged, untracked)."""
    repo = Path(repo)
    _git(repo, "rev-parse", "--verify", "--quiet", f"{since}^{{commit}}")
    diff = _git(repo, "diff", "--name-only", "--no-renames", since, "--")
    untracked = _git(repo, "ls-files", "--others", "--exclude-standard")
    return sorted({line for line in (diff + untracked).splitlines() if line})


def _repo_rel(repo: Path, path: str | Path | None) -> str | None:
    """``path`` relative to the repository root, or None when it lies outside."""
    if path is None:
        return None
    rel = os.path.relpath(Path(path).resolve(), repo.resolve())
    return None if rel.startswith("..") else PurePosixPath(Path(rel)).as_posix()


def _yaml_at(repo: Path, rev: str, rel: str | None) -> Any:
    """A YAML file as of ``rev`` (None when outside the repository or absent there)."""
    text = _git(repo, "show", f"{rev}:{rel}", check=False) if rel else ""
    return parse_yaml(text, "config", f"{rev}:{rel}") if text else None


def _yaml(path: str | Path | None) -> Any:
    return load_yaml(path, "config") if path and Path(path).exists() else None


def affected_since(since: str, repo: str | Path = ".", *, params_file: str | Path | None = None,
                   manifest: str | Path | None = None, data_dir: str | Path | None = None) -> dict[str, list[str]]:
    """:func:`affected_tasks` for the changes between ``since`` and the working tree of ``repo``."""
    from peftops.pipeline.caching import PACKAGE_DIR
    from peftops.config import default_data_root
    from peftops.data.manifest import EMBEDDED_MANIFEST

    repo = Path(_git(Path(repo), "rev-parse", "--show-toplevel").strip())
    manifest = manifest or EMBEDDED_MANIFEST
    manifest_rel, params_rel = _repo_rel(repo, manifest), _repo_rel(repo, params_file)
    return affected_tasks(
        changed_files(since, repo), new_manifest=(_yaml(manifest) or {}).get("tasks") or {},
        old_manifest=(_yaml_at(repo, since, manifest_rel) or {}).get("tasks") or {}, manifest_path=manifest_rel,
        new_params=_yaml(params_file), old_params=_yaml_at(repo, since, params_rel), params_path=params_rel,
        data_dir=_repo_rel(repo, data_dir or default_data_root()), code_dir=_repo_rel(repo, PACKAGE_DIR) or "peftops")
