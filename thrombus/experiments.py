"""Experiments and result tables as the config declares them.

An experiment is a split kind (monocentric or leave-one-center-out), the model and training settings
laid over the config's global `model` and `train` sections, and the folds to run. A table names
experiments and the sequence subsets its rows show. Declaring them in the config, not in code, is what
lets one command regenerate every table of the paper, and lets a site add its own ablation without
touching the package.

Experiments that share a split kind share its split file (`results/splits/<split>.json`), so every row
of an ablation is computed on exactly the same subjects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from thrombus.samples import ConfigError, Subject

#: Keys of the `train` section read by the workflow (resuming) or by the split files, not by training.
WORKFLOW_TRAIN_KEYS: tuple[str, ...] = ("resume",)
SPLIT_TRAIN_KEYS: tuple[str, ...] = ("val_fraction", "test_fraction")


#: A retraining of experiment E with another seed is the experiment E-r2, E-r3, ...: declared names cannot
#: hold "-" (the config schema), so no declared experiment is ever read as a replicate.
REPLICATE_MARK = "-r"


def replicate_name(base: str, replicate: int) -> str:
    """The name of an experiment's `replicate`-th training (the first keeps the declared name)."""
    return base if replicate == 1 else f"{base}{REPLICATE_MARK}{replicate}"


def split_replicate(name: str) -> tuple[str, int]:
    """(declared experiment, replicate number) of a name made by `replicate_name`."""
    base, mark, number = name.rpartition(REPLICATE_MARK)
    if mark and base and number.isdigit() and int(number) >= 2:
        return base, int(number)
    return name, 1


@dataclass(frozen=True)
class Experiment:
    """One experiment, with its sections already merged over the global ones.

    `replicate` > 1 marks a retraining of the declared experiment with the seed moved by replicate - 1:
    two trainings of one recipe differed by as much as GMD and no dropout did (CHANGELOG, "Measured, not
    kept"), so a comparison of recipes needs several trainings of each, pooled in its tables.
    """

    name: str
    split: str
    model: dict[str, Any]
    train: dict[str, Any]
    folds: tuple[int, ...]
    description: str = ""
    replicate: int = 1

    @property
    def declared(self) -> str:
        """The experiment's name in the config (and in the tables)."""
        return split_replicate(self.name)[0]

    def seed(self, base_seed: int) -> int:
        """The training seed of this replicate, given the config's seed."""
        return base_seed + self.replicate - 1

    def training_sections(self) -> dict[str, Any]:
        """What `thrombus train --options` reads: the train section (workflow-only keys left out) and the model."""
        train = {key: value for key, value in self.train.items() if key not in WORKFLOW_TRAIN_KEYS + SPLIT_TRAIN_KEYS}
        return {"train": train, "model": self.model}


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`overrides` laid over `base`, nested mappings merged key by key (so `train.gmd.mode` alone can change)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def labelled(subjects: Iterable[Subject]) -> list[Subject]:
    """Subjects with a thrombus label (1 or 0): the ones split files, training and evaluation use."""
    return [s for s in subjects if s.thrombus in ("0", "1")]


def fold_centers(subjects: Iterable[Subject]) -> list[str]:
    """Centers in fold order: both split kinds make one fold per center with labelled subjects, sorted."""
    return sorted({s.center for s in labelled(subjects)})


def experiments(config: Mapping[str, Any], subjects: Sequence[Subject]) -> dict[str, Experiment]:
    """Every experiment of the config, checked against the cohort (fold numbers that exist)."""
    centers = fold_centers(subjects)
    found = {}
    for name, settings in sorted(config["experiments"].items()):
        folds = _folds(name, settings.get("folds", "all"), centers)
        if settings["split"] == "loco" and len(centers) < 2:
            raise ConfigError(
                f"experiments.{name}: leave-one-center-out needs labelled subjects from two centers or more, "
                f"the sheet has {centers or 'none'}; remove the experiment or add centers"
            )
        for replicate in range(1, int(settings.get("replicates", 1)) + 1):
            found[replicate_name(name, replicate)] = Experiment(
                name=replicate_name(name, replicate),
                split=settings["split"],
                model=deep_merge(config.get("model") or {}, settings.get("model") or {}),
                train=deep_merge(config.get("train") or {}, settings.get("train") or {}),
                folds=folds,
                description=settings.get("description", ""),
                replicate=replicate,
            )
    return found


def replicates_of(declared: str, found: Mapping[str, Experiment]) -> list[Experiment]:
    """A declared experiment and its retrainings, first replicate first."""
    return sorted((e for e in found.values() if e.declared == declared), key=lambda e: e.replicate)


def _folds(name: str, requested: Any, centers: Sequence[str]) -> tuple[int, ...]:
    if requested == "all":
        return tuple(range(len(centers)))
    unknown = [fold for fold in requested if fold >= len(centers)]
    if unknown:
        raise ConfigError(
            f"experiments.{name}.folds: {unknown} do not exist; there is one fold per center with labelled "
            f"subjects, numbered 0 to {len(centers) - 1} ({', '.join(f'{i}: {c}' for i, c in enumerate(centers))})"
        )
    return tuple(sorted(requested))


def check_tables(config: Mapping[str, Any], channels: Sequence[str]) -> None:
    """Refuse a table naming an unknown experiment or subset, and a subset naming an unknown channel."""
    subsets = config["evaluation"]["subsets"]
    for name, removed in subsets.items():
        unknown = [channel for channel in removed if channel not in channels]
        if unknown:
            raise ConfigError(
                f"evaluation.subsets.{name} removes {unknown}, which are not model channels "
                f"(harmonise.channels: {list(channels)})"
            )
        if len(removed) >= len(channels):
            raise ConfigError(f"evaluation.subsets.{name} removes every channel: keep at least one")
    for table, settings in config["tables"].items():
        missing = [e for e in settings["experiments"] if e not in config["experiments"]]
        if missing:
            raise ConfigError(
                f"tables.{table} names experiments {missing} that `experiments` does not declare "
                f"(declared: {', '.join(sorted(config['experiments']))})"
            )
        missing = [s for s in settings.get("subsets", ["all"]) if s not in subsets]
        if missing:
            raise ConfigError(
                f"tables.{table} names subsets {missing} that `evaluation.subsets` does not declare "
                f"(declared: {', '.join(subsets)})"
            )


def folds_of_table(table: str, settings: Mapping[str, Any], found: Mapping[str, Experiment]) -> list[tuple[str, int]]:
    """(experiment, fold) behind one table's rows: every fold of each experiment, or those of its `folds`,
    for each of its replicates.

    An ablation compares variants trained on one fold against the method trained on every fold; without
    `folds` the method's row would pool all held-out centers while the others show one.
    """
    wanted = settings.get("folds")
    pairs = []
    for experiment in settings["experiments"]:
        folds = list(found[experiment].folds)
        if wanted is not None:
            missing = [fold for fold in wanted if fold not in folds]
            if missing:
                raise ConfigError(
                    f"tables.{table}.folds names folds {missing} that experiment {experiment!r} does not run "
                    f"(its folds: {folds})"
                )
            folds = [fold for fold in folds if fold in wanted]
        pairs.extend((member.name, fold) for member in replicates_of(experiment, found) for fold in folds)
    return pairs


def table_folds(config: Mapping[str, Any], found: Mapping[str, Experiment]) -> list[tuple[str, int]]:
    """(experiment, fold) of every model the tables need, each once, in a stable order."""
    return sorted({pair for table, settings in config["tables"].items() for pair in folds_of_table(table, settings, found)})
