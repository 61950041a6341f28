"""Every shipped recipe parses against its command's strict defaults and names its command.

A misspelt key in a recipe that no test trains would otherwise surface only on a user's cluster.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FINETUNE = sorted((ROOT / "recipes" / "finetune").glob("*.yaml")) + sorted((ROOT / "recipes" / "two_stage").glob("model_*.yaml"))
FINETUNE = [p for p in FINETUNE if p.stem != "raver_context_sweep"]


def _first_line(path: Path) -> str:
    return path.read_text(encoding="utf-8").splitlines()[0]


@pytest.mark.parametrize("recipe", FINETUNE, ids=[p.stem for p in FINETUNE])
def test_finetune_recipes_load(recipe: Path, tmp_path: Path) -> None:
    from finetune.run import build_config

    assert _first_line(recipe).startswith(("# ssl-aver finetune --config recipes/", "# ssl-aver mer2023 --config recipes/"))
    cfg = build_config(recipe, [f"data.root={tmp_path}"])
    assert cfg.head and int(cfg.splits.k) >= 1


def test_runner_recipes_load(tmp_path: Path) -> None:
    from finetune import ablate, experiment, robustness, two_stage_tables

    for path in sorted((ROOT / "recipes" / "experiments").glob("*.yaml")):
        assert _first_line(path).startswith("# ssl-aver experiment --config")
        experiment.build_config(path, [f"data.root={tmp_path}"])
    for path in sorted((ROOT / "recipes" / "ablations").glob("*.yaml")):
        assert _first_line(path).startswith("# ssl-aver ablate --config")
        ablate.build_config(path, [f"data.root={tmp_path}", f"pretrain.store={tmp_path}"])
    for path in sorted((ROOT / "recipes" / "robustness").glob("*.yaml")):
        assert _first_line(path).startswith("# ssl-aver robustness")
        robustness.build_config(path)
    tables = ROOT / "recipes" / "two_stage" / "tables.yaml"
    assert _first_line(tables).startswith("# ssl-aver two-stage-tables --config")
    two_stage_tables.build_config(tables, [f"data.root={tmp_path}"])


def test_feature_recipes_load() -> None:
    from ssl_aver.features.extract import resolve_config

    for path in sorted((ROOT / "recipes" / "features").glob("*.yaml")):
        assert _first_line(path).startswith("# ssl-aver features extract")
        cls, cfg = resolve_config(None, str(path), [])
        assert cls.name == cfg["extractor"]


def test_compare_recipes_load(tmp_path: Path) -> None:
    """Every comparison recipe parses, and so does the fine-tuning recipe of each of its systems
    (a system's misspelt model key would otherwise surface only when that system trains)."""
    from finetune import compare

    recipes = sorted((ROOT / "recipes" / "compare").glob("*.yaml"))
    assert {p.stem for p in recipes} >= {"paper2_table1", "paper3_table2", "paper4_table2", "demo"}
    for path in recipes:
        assert _first_line(path).startswith("# ssl-aver compare --config")
        cfg = compare.build_config(path, [f"data.root={tmp_path}"])
        for system in cfg.systems:
            built = compare.system_config(cfg, system, tmp_path / "out", tmp_path / "splits.csv")
            assert built.head == system.head
