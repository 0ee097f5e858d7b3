"""Sweep specs: a yaml that names experiment configs, seeds and override grids, expanded into runs.

A spec::

    name: quick                      # the sweep's name (folder, wandb group)
    configs:                         # experiments/ yaml files (relative to the working directory or the spec)
      - experiments/quick/csdi_physionet.yaml
    baselines:                       # optional: configs of non-learned baselines (tsdiffusion.baselines)
      - experiments/imputation/physionet/interpolation.yaml
    seeds: [1, 2]
    grid:                            # ablations: every combination of these CLI overrides
      model.init_args.sample_steps: [5, 10]
    overrides:                       # applied to every run (e.g. a small budget)
      trainer.max_epochs: 2
    reference: reference.yaml        # optional: published numbers (default: reference.yaml next to the spec)
    variants:                        # optional: named override sets, one more grid axis called ``variant``
      base: {}                       #   (one-factor-at-a-time ablations: each variant changes one thing)
      wide: {model.init_args.denoiser.init_args.cond_hidden: 64}
    ablation:                        # optional: the reference level of each factor (a grid key or ``variant``);
      variant: base                  #   ``tsdiffusion benchmark report DIR --ablation`` then compares every
                                     #   level with it, paired by seed (tsdiffusion.benchmark.ablation)

expands into ``len(configs) x len(variants) x prod(len(grid values)) x len(seeds)`` runs, plus one run per
baseline: a baseline is deterministic given its ``sample_seed``, so it runs once, at the first seed, without the
grid, variants and overrides (which address models). Baselines may also be listed under ``configs``; either way
the report recognises them from their records (``baseline``) and shows them as rows of the same table, and a config
whose
``model.init_args.baseline`` is set runs with :data:`NO_TRAINING` (one empty training step, then the test).
A run's id is a readable prefix (config folder and name, seed) plus a hash of the config path as written, all
overrides and the seed, so the same spec always gives the same ids, and changing a budget gives new ones.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tsdiffusion.errors import ConfigError

SPEC_KEYS = {
    "name", "configs", "baselines", "seeds", "grid", "overrides", "reference", "description", "notes", "variants",
    "ablation",
}  # fmt: skip
#: The grid axis of a spec's ``variants`` (named override sets).
VARIANT = "variant"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class SpecError(ConfigError):
    """A sweep spec that cannot be expanded (unknown key, missing config, bad value)."""


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep spec; ``path`` is the spec file (None when built in code)."""

    name: str
    configs: tuple[str, ...]
    seeds: tuple[int, ...] = (1,)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    reference: str | None = None
    path: Path | None = None
    baselines: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    ablation: dict[str, Any] = field(default_factory=dict)

    def resolve(self, config: str) -> Path:
        """A config path as written -> an existing file: the working directory first, then the spec's folder
        and its parents (so ``benchmarks/specs/quick.yaml`` finds ``experiments/...`` from any directory)."""
        candidates = [Path(config)]
        if self.path is not None:
            folder = self.path.resolve().parent
            candidates += [d / config for d in (folder, *folder.parents)]
        for c in candidates:
            if c.is_file():
                return c.resolve()
        raise SpecError(f"config {config!r} not found (looked in {[str(c) for c in candidates]})")

    def reference_path(self) -> Path | None:
        """The reference table: ``reference`` (relative to the spec), else ``reference.yaml`` beside it."""
        base = self.path.parent if self.path is not None else Path.cwd()
        path = base / (self.reference or "reference.yaml")
        return path if path.is_file() else None


@dataclass(frozen=True)
class Run:
    """One training + test run of a sweep.

    ``overrides`` are the spec's common overrides followed by this run's grid values (CLI keys -> values);
    ``grid`` holds only the grid part (what distinguishes the run's setting in the results table).
    """

    id: str
    config: str
    seed: int
    overrides: dict[str, Any]
    grid: dict[str, Any]

    def setting(self) -> str:
        """A short label of the grid values, e.g. ``sample_steps=5``."""
        return ", ".join(f"{short_key(k, self.grid)}={format_value(v)}" for k, v in self.grid.items())


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep spec yaml."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such sweep spec file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise SpecError(f"{path}: not a readable YAML file ({' '.join(str(err).split())})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a sweep spec is a mapping with keys {sorted(SPEC_KEYS)}")
    return parse_spec(raw, path=path)


def parse_spec(raw: dict[str, Any], path: Path | None = None) -> SweepSpec:
    """Check a spec mapping (unknown keys are errors, so a typo does not silently shrink a sweep)."""
    where = str(path or "spec")
    unknown = set(raw) - SPEC_KEYS
    if unknown:
        raise SpecError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(SPEC_KEYS)}")
    name = str(raw.get("name") or (path.stem if path else ""))
    if not _NAME.match(name):
        raise SpecError(f"{where}: name {name!r} must be letters, digits, '_', '-' or '.'")
    configs, baselines = raw.get("configs") or [], raw.get("baselines") or []
    if isinstance(configs, str) or isinstance(baselines, str) or not (configs or baselines):
        raise SpecError(f"{where}: 'configs' (and 'baselines') must be lists of experiment yaml paths, not both empty")
    seeds = raw.get("seeds", [1])
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise SpecError(f"{where}: 'seeds' must be a non-empty list of integers, got {seeds!r}")
    grid = dict(raw.get("grid") or {})
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SpecError(f"{where}: grid values of {key!r} must be a non-empty list, got {values!r}")
    variants = raw.get("variants") or {}
    if not isinstance(variants, dict) or not all(isinstance(v, dict | type(None)) for v in variants.values()):
        raise SpecError(f"{where}: 'variants' must map names to override mappings, got {variants!r}")
    variants = {str(k): dict(v or {}) for k, v in variants.items()}
    if VARIANT in grid:
        raise SpecError(f"{where}: {VARIANT!r} is the axis of 'variants', not a grid key")
    ablation = raw.get("ablation") or {}
    if not isinstance(ablation, dict):
        raise SpecError(f"{where}: 'ablation' must map factors (grid keys or {VARIANT!r}) to their reference level")
    for factor, level in ablation.items():
        levels = list(variants) if factor == VARIANT else grid.get(factor)
        if levels is None or level not in levels:
            raise SpecError(f"{where}: ablation reference {factor}={level!r} is not a level of the spec ({levels})")
    return SweepSpec(
        name=name,
        configs=tuple(str(c) for c in configs),
        baselines=tuple(str(c) for c in baselines),
        seeds=tuple(seeds),
        grid=grid,
        overrides=dict(raw.get("overrides") or {}),
        reference=raw.get("reference"),
        path=path.resolve() if path else None,
        notes=_notes(raw.get("notes"), where),
        variants=variants,
        ablation=dict(ablation),
    )


def _notes(raw: Any, where: str) -> tuple[str, ...]:
    """``notes``: lines the report prints under its tables (what a reader must know to judge a row)."""
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise SpecError(f"{where}: 'notes' must be a list of strings, got {raw!r}")
    return tuple(" ".join(x.split()) for x in raw)


#: Overrides of a run whose config evaluates a non-learned baseline: ``fit --test_after_fit`` would otherwise
#: loop over the training windows for the trainer's default number of epochs, doing nothing.
NO_TRAINING = {"trainer.max_epochs": 1, "trainer.limit_train_batches": 1, "trainer.limit_val_batches": 0}


def is_baseline_config(spec: SweepSpec, config: str) -> bool:
    """True when the config's ``model.init_args.baseline`` is set (False when it cannot be read)."""
    try:
        raw = yaml.safe_load(spec.resolve(config).read_text()) or {}
    except (SpecError, OSError, yaml.YAMLError):
        return False
    init = (raw.get("model") or {}).get("init_args") or {} if isinstance(raw, dict) else {}
    return isinstance(init, dict) and bool(init.get("baseline"))


def expand(spec: SweepSpec) -> list[Run]:
    """All runs of a spec, in the order configs x variants x grid combinations x seeds; ids are unique and stable.

    A variant's overrides come after the common ones and before the grid's; its name is the run's ``variant``
    grid value (the overrides themselves, not the name, enter the run id)."""
    keys = list(spec.grid)
    combos = list(itertools.product(*(spec.grid[k] for k in keys)))
    variants = spec.variants.items() if spec.variants else [(None, {})]
    runs = []
    for config in spec.configs:
        extra = NO_TRAINING if is_baseline_config(spec, config) else {}
        for name, changes in variants:
            for combo in combos:
                grid = ({VARIANT: name} if name is not None else {}) | dict(zip(keys, combo))
                for seed in spec.seeds:
                    overrides = {**spec.overrides, **changes, **dict(zip(keys, combo)), **extra}
                    runs.append(Run(run_id(config, overrides, seed), config, seed, overrides, grid))
    for config in spec.baselines:
        runs.append(Run(run_id(config, NO_TRAINING, spec.seeds[0]), config, spec.seeds[0], dict(NO_TRAINING), {}))
    ids = [r.id for r in runs]
    if len(set(ids)) != len(ids):
        raise SpecError("the spec expands to duplicate runs (a config or seed listed twice?)")
    return runs


def run_id(config: str, overrides: dict[str, Any], seed: int) -> str:
    """``<folder>-<config stem>-s<seed>-<8 hex>``; the hash covers the config path, overrides and seed."""
    payload = json.dumps(
        {"config": Path(config).as_posix(), "overrides": sorted(overrides.items()), "seed": seed},
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(payload.encode()).hexdigest()[:8]
    p = Path(config)
    prefix = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{p.parent.name}-{p.stem}" if p.parent.name else p.stem)
    return f"{prefix}-s{seed}-{digest}"


def format_value(value: Any) -> str:
    """A value as the CLI reads it (jsonargparse parses it as yaml): booleans lower case, lists as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value)
    return str(value)


def short_key(key: str, keys: dict[str, Any]) -> str:
    """The last component of a dotted key, unless another key of ``keys`` ends the same way."""
    last = key.rsplit(".", 1)[-1]
    clashes = [k for k in keys if k.rsplit(".", 1)[-1] == last]
    return last if len(clashes) == 1 else key


def override_args(overrides: dict[str, Any]) -> list[str]:
    """``{"trainer.max_epochs": 2}`` -> ``["--trainer.max_epochs", "2"]``."""
    args: list[str] = []
    for key, value in overrides.items():
        args += [f"--{key}", format_value(value)]
    return args
