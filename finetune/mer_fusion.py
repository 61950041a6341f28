"""`ssl-aver mer-table --config RECIPE [key=value ...]`: paper 5's Table 1 on a corpus.

Runs the MER head once per fusion structure (parallel, pairwise, hierarchical = the paper's
1, 2, 3) and decoder (baseline, jdev) with the same recipe, splits and features, then fuses the
three structures of each decoder at the decision level (Eqs. 10-11):

    e = k1 e1 + k2 e2 + k3 e3,   v = k1 v1 + k2 v2 + k3 v3,   k1 + k2 + k3 = 1, k >= 0,

choosing (k1, k2, k3) per split on the DEV predictions by a grid search over the simplex
(`--step`, 0.1 by default) for the best MER score, then scoring the test predictions once
with them. The paper does not say how the k were chosen; a dev grid search keeps the test set
untouched. Fusion uses exactly the splits each run's config names (splits.k, or the first k of
its splits file), checked against its metrics.json: split_* folders left on disk by an earlier
run with another k are never read, and runs on other splits are refused. Writes OUT/table1.csv
(one row per structure/decoder/fused: weighted F1 "Dis", valence MSE "Dim", the MSE over the
test set's valence variance, MER score "Com" on MER2023's [-5, 5] valence scale, mean and std
over splits), OUT/table1.md (the paper's layout) and OUT/table1.json (with the chosen weights
per split). A run's finished splits are reused when their recorded inputs (inputs.json) still
match, so an interrupted table resumes; changed inputs stop the table naming them (`--force`
recomputes).

Inputs. The three structures compute the same function unless there are two or more acoustic
vectors and a visual one (`ssl_aver.models.afg.structures_coincide`): with one acoustic vector
(an openSMILE store, the pretrained encoder) their "fusion" would be a seed ensemble, so the
table refuses to run more than one structure then. Paper 5 fuses "3 well-performing acoustic
features HL(18), HL(19), HL(20) and 2 visual features RF(pooling) and MR(block2)": a
layer-stacked acoustic store with `model.audio_layers`, and `--video-stores A B` stacks the face
stores of several visual models into OUT/video_stack (`finetune.heads.mer.stack_face_stores`),
one AFG input each.

Significance: the paper reports one score per system on the MER2023 test sets and runs no
statistical test (its "significantly improves" is not backed by one). Here every system is run
on the same K splits, so the table adds a paired t-test (finetune.tables.compare, paired by
split id) of a reference system against every other column: by default the paper's final system,
the fused JDEV decoder (`fused_jdev`; without fusion the last structure of the last decoder), on
the MER score, two-tailed (no direction is claimed in advance; paper 2's convention), p < 0.05.
`--reference`, `--metric`, `--alternative` and `--alpha` change it; table1.json has the p-values.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from omegaconf import OmegaConf

from finetune.valence import MER_SCALE
from ssl_aver.errors import UserError
from ssl_aver.io import atomic_write_text, read_json, write_dataframe, write_json

STRUCTURES = ("parallel", "pairwise", "hierarchical")
DECODERS = ("baseline", "jdev")
SCORES = ("weighted_f1", "valence_mse", "valence_nmse", "mer_score")


def simplex_grid(n: int, step: float = 0.1) -> np.ndarray:
    """All weight vectors of length n on a grid of `step` with non-negative entries summing to 1."""
    if n < 1:
        raise UserError("fusion needs at least one system")
    units = round(1.0 / step)
    if units < 1 or abs(units * step - 1.0) > 1e-9:
        raise UserError(f"--step must divide 1 (e.g. 0.1, 0.05, 0.25), got {step}")
    rows = [c for c in itertools.product(range(units + 1), repeat=n - 1) if sum(c) <= units]
    return np.array([[*c, units - sum(c)] for c in rows], dtype=np.float64) / units


def fuse(probs: Sequence[np.ndarray], valence: Sequence[np.ndarray], weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted sums of the systems' posteriors [N, C] and valence estimates [N] (Eqs. 10-11)."""
    fused_probs = sum(w * p for w, p in zip(weights, probs))
    fused_valence = sum(w * v for w, v in zip(weights, valence))
    return np.asarray(fused_probs), np.asarray(fused_valence)


def scores(
    probs: np.ndarray, valence: np.ndarray, targets: np.ndarray, valence_target: np.ndarray, scale: Sequence[float] = MER_SCALE,
) -> dict[str, float]:
    """Weighted F1 of the argmax emotion ("Dis"), valence MSE ("Dim") on the targets' `scale`, the
    MSE over the targets' variance, and the MER score ("Com", MSE on [-5, 5])."""
    from ssl_aver.metrics import argmax_one_hot, classification_scores

    from finetune.heads.mer import mer_score, normalised_mse

    f1 = classification_scores(argmax_one_hot(targets), argmax_one_hot(probs))["weighted_f1"]
    mse = float(np.mean((np.asarray(valence, np.float64) - valence_target) ** 2))
    return {"weighted_f1": float(f1), "valence_mse": mse, "valence_nmse": normalised_mse(mse, valence_target), "mer_score": mer_score(f1, mse, scale)}


def choose_weights(
    probs: Sequence[np.ndarray], valence: Sequence[np.ndarray], targets: np.ndarray, valence_target: np.ndarray, step: float = 0.1,
    scale: Sequence[float] = MER_SCALE,
) -> tuple[np.ndarray, float]:
    """The grid weights with the best MER score on these (dev) predictions; ties keep the first."""
    grid = simplex_grid(len(probs), step)
    found = [scores(*fuse(probs, valence, w), targets, valence_target, scale)["mer_score"] for w in grid]
    best = int(np.argmax(found))
    return grid[best], float(found[best])


def _read_predictions(path: Path, classes: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    import pandas as pd

    if not path.is_file():
        raise UserError(f"{path} is missing: run the structure runs with eval.dev_predictions=true (the MER recipes do)")
    frame = pd.read_csv(path, dtype={"clip": str})
    if "valence" not in frame.columns:
        raise UserError(f"{path} has no valence column: it was not written by the mer head")
    return frame["clip"].tolist(), frame[list(classes)].to_numpy(np.float64), frame["valence"].to_numpy(np.float64)


def run_split_ids(run: str | Path) -> list[int]:
    """The split ids of a finished run as its config names them: 0..k-1 for splits.k, or for a
    splits file the first k of it (the run's splits.csv is that file's copy); refused when its
    metrics.json reports other splits. Folders on disk are never listed: a stale split_07 of an
    earlier run with another k must not join a fusion."""
    from ssl_aver.splits import load_splits

    root = Path(run)
    for name in ("config.yaml", "metrics.json"):
        if not (root / name).is_file():
            raise UserError(f"{root / name} is missing: finish that MER run (ssl-aver finetune or mer-table) before fusing it")
    cfg = OmegaConf.load(root / "config.yaml")
    k = int(cfg.splits.k)
    if cfg.splits.file:
        k = min(k, len(load_splits(root / "splits.csv")))
    expected = list(range(k))
    recorded = [int(s["split"]) for s in read_json(root / "metrics.json")["splits"]]
    if recorded != expected:
        raise UserError(f"{root}: metrics.json reports splits {recorded} but its config names {expected} (splits.k={cfg.splits.k}); "
                        "rerun it with --force before fusing")
    return expected


def _run_scale(run: Path) -> tuple[float, float]:
    """The valence scale a run's config states (runs from before valence had a scale are refused)."""
    from finetune.heads.mer import parse_valence_scale

    value = OmegaConf.select(OmegaConf.load(run / "config.yaml"), "model.valence_scale")
    if value is None:
        raise UserError(f"{run} was made before the derived valence was put on MER2023's [-5, 5] (its config has no model.valence_scale); "
                        "rerun it with --force")
    return parse_valence_scale(value)


def fuse_runs(runs: Sequence[str | Path], step: float = 0.1) -> dict[str, Any]:
    """Decision-level fusion of finished MER runs (same data and splits): per split of the runs'
    config (`run_split_ids`), weights chosen on dev and test scores; plus mean/std over splits."""
    from finetune.data import load_task

    dirs = [Path(r) for r in runs]
    ids = run_split_ids(dirs[0])
    cfg = OmegaConf.load(dirs[0] / "config.yaml")
    scale = _run_scale(dirs[0])
    splits_sha = {read_json(d / "inputs.json").get("splits_sha256") if (d / "inputs.json").is_file() else None for d in dirs}
    for d in dirs[1:]:
        other = run_split_ids(d)
        if other != ids:
            raise UserError(f"{d} has splits {other} but {dirs[0]} has {ids}; fuse runs made with the same splits (splits.k, splits.file)")
        if _run_scale(d) != scale:
            raise UserError(f"{d} and {dirs[0]} state different model.valence_scale; fuse runs on the same valence targets")
    if len(splits_sha) > 1:
        raise UserError(f"the runs {[str(d) for d in dirs]} were made on different speaker splits (inputs.json splits_sha256); "
                        "rerun them with the same splits.seed / splits.file")
    task = load_task(cfg.data)
    if task.task != "multiclass":
        raise UserError("decision-level fusion scores single-label emotions (data.target=multiclass)")
    labels = task.labels.set_index("clip")
    per_split = []
    for k in ids:
        split = f"split_{k:02d}"
        chosen = {}
        for part, name in (("dev", "predictions_dev.csv"), ("test", "predictions.csv")):
            read = [_read_predictions(d / split / name, task.classes) for d in dirs]
            clips = read[0][0]
            if any(r[0] != clips for r in read):
                raise UserError(f"the runs' {split}/{name} list different clips; fuse runs made with the same data and splits")
            rows = labels.loc[clips]
            chosen[part] = ([r[1] for r in read], [r[2] for r in read], rows[task.targets].to_numpy(np.float64), rows["valence"].to_numpy(np.float64))
        weights, dev_score = choose_weights(*chosen["dev"], step=step, scale=scale)
        probs, valence, targets, valence_target = chosen["test"]
        test = scores(*fuse(probs, valence, weights), targets, valence_target, scale)
        per_split.append({"split": k, "weights": weights.tolist(), "dev_mer_score": dev_score, **test})
    overall = {}
    for key in SCORES:
        values = [s[key] for s in per_split]
        overall[key] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}
    return {"runs": [str(d) for d in dirs], "step": step, "splits": per_split, "overall": overall}


def _markdown(
    rows: list[dict[str, Any]], structures: Sequence[str], decoders: Sequence[str], title: str, significance: dict[str, Any], valence_note: str,
) -> str:
    """The paper's layout (one column per structure/decoder), a p row and the test's legend."""
    from finetune.tables import legend, mark, p_cell

    columns = [(s, d) for s in [*structures, "fused"] for d in decoders]
    index = {(r["structure"], r["decoder"]): r for r in rows}
    numbers = {s: str(STRUCTURES.index(s) + 1) for s in structures}
    numbers["fused"] = "+".join(numbers[s] for s in structures) + " fused"
    heads = [f"{numbers[s]} {d}{mark(f'{s}_{d}', significance)}" for s, d in columns]
    lines = [f"# {title}", "", "| | " + " | ".join(heads) + " |", "|---" * (len(columns) + 1) + "|"]
    for key, name in (("weighted_f1", "Dis (weighted F1, up)"), ("valence_mse", "Dim (valence MSE, down)"),
                      ("valence_nmse", "Dim / test variance (down)"), ("mer_score", "Com (MER score, up)")):
        cells = [f"{index[c][key]:.4f} +- {index[c][key + '_std']:.4f}" if c in index else "" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    cells = [p_cell(f"{s}_{d}", significance) if (s, d) in index else "" for s, d in columns]
    lines.append(f"| p vs {significance['reference']} ({significance['metric']}) | " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", valence_note, "", *legend(significance)]) + "\n"


def default_reference(structures: Sequence[str], decoders: Sequence[str]) -> str:
    """The paper's final system: the fused structures of the last decoder (JDEV by default), or
    the last structure when only one is run (no fusion)."""
    return f"{'fused' if len(structures) > 1 else structures[-1]}_{decoders[-1]}"


def check_inputs(cfg: Any, structures: Sequence[str]) -> tuple[int, int]:
    """Acoustic and visual input counts of the recipe's head on its stores; refuses to compare
    structures that would compute the same function (module docstring, "Inputs")."""
    from finetune.heads.mer import input_counts
    from finetune.run import feature_store
    from ssl_aver.features.store import FeatureStore
    from ssl_aver.models.afg import structures_coincide

    out = Path(cfg.output_dir)
    shapes = {m: FeatureStore(feature_store(cfg, m, out)).frame_shape for m in ("audio", "video") if m in cfg.model.features}
    n_acoustic, n_visual = input_counts(cfg.model, shapes.get("audio"), shapes.get("video"), cfg.encoder is not None)
    if len(structures) > 1 and structures_coincide(n_acoustic, n_visual):
        raise UserError(
            f"mer-table: with {n_acoustic} acoustic and {n_visual} visual input(s) the structures {list(structures)} compute the same "
            "function (pairwise and hierarchical reduce to parallel below 2 acoustic + 1 visual inputs), so their fusion is a seed "
            "ensemble; give several acoustic inputs (model.audio_layers of a layer-stacked store, or model.audio_groups) and a visual store, "
            "or run --structures parallel")
    return n_acoustic, n_visual


def mer_table(
    config: str | Path, overrides: Sequence[str] = (), structures: Sequence[str] = STRUCTURES, decoders: Sequence[str] = DECODERS, step: float = 0.1,
    reference: str | None = None, metric: str = "mer_score", alternative: str = "two-sided", alpha: float = 0.05, force: bool = False,
    video_stores: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """Run (or reuse) every structure x decoder run of the recipe, fuse, test against the
    reference system (module docstring) and write Table 1. `video_stores`: face stores of
    several visual models, stacked into OUT/video_stack as the runs' visual store."""
    import pandas as pd

    from finetune.grid import is_main_process, process_state, run_grid
    from finetune.heads.mer import parse_valence_scale, stack_face_stores
    from finetune.run import build_config
    from finetune.tables import check_test, compare

    unknown = sorted(set(structures) - set(STRUCTURES)) + sorted(set(decoders) - set(DECODERS))
    if unknown:
        raise UserError(f"unknown structure/decoder {unknown}; structures: {STRUCTURES}, decoders: {DECODERS}")
    reference = reference or default_reference(structures, decoders)
    names = [f"{s}_{d}" for d in decoders for s in [*structures, *(["fused"] if len(structures) > 1 else [])]]
    if reference not in names:
        raise UserError(f"--reference {reference} is not a system of this table; choose one of {names}")
    if metric not in SCORES:
        raise UserError(f"--metric {metric} is not a Table 1 score; choose one of {', '.join(SCORES)}")
    check_test(alternative, alpha)
    base = build_config(config, overrides)
    if str(base.head) != "mer":
        raise UserError(f"mer-table needs a recipe of the mer head, got head={base.head}")
    out = Path(base.output_dir)
    if video_stores:
        state = process_state()
        if state.is_main_process:
            stack_face_stores(video_stores, out / "video_stack", replace=True)
        state.wait_for_everyone()
        overrides = [*overrides, f"features.video.store={out / 'video_stack'}"]
    first = build_config(config, [*overrides, f"output_dir={out / f'{structures[0]}_{decoders[0]}'}"])
    n_acoustic, n_visual = check_inputs(first, structures)
    rows: list[dict[str, Any]] = []
    fused: dict[str, Any] = {}
    configs = {
        f"{structure}_{decoder}": build_config(config, [*overrides, f"output_dir={out / f'{structure}_{decoder}'}", f"model.structure={structure}",
                                                        f"model.decoder={decoder}", "eval.dev_predictions=true"])
        for decoder in decoders for structure in structures
    }
    summaries: dict[str, Any] = run_grid(configs, force=force)
    if not is_main_process():
        return {"rows": []}
    for decoder in decoders:
        run_dirs = []
        for structure in structures:
            run_dirs.append(out / f"{structure}_{decoder}")
            primary = summaries[f"{structure}_{decoder}"]["overall"]
            rows.append({"structure": structure, "decoder": decoder, **{k: primary[k]["mean"] for k in SCORES}, **{f"{k}_std": primary[k]["std"] for k in SCORES}})
        if len(run_dirs) > 1:
            fused[decoder] = summaries[f"fused_{decoder}"] = fuse_runs(run_dirs, step)
            overall = fused[decoder]["overall"]
            rows.append({"structure": "fused", "decoder": decoder, **{k: v["mean"] for k, v in overall.items()}, **{f"{k}_std": v["std"] for k, v in overall.items()}})
    significance = compare(summaries, reference, metric, alternative, alpha)
    title = (f"MER joint decoding on {Path(str(base.data.root)).name} ({base.data.condition} ratings), {int(base.splits.k)} splits, test set, "
             f"{n_acoustic} acoustic + {n_visual} visual inputs")
    scale = parse_valence_scale(base.model.valence_scale)
    note = (f"Valence: {base.model.valence_source} on [{scale[0]:g}, {scale[1]:g}]; Dim / test variance = MSE over the variance of the "
            "test set's valence targets (1 = predicting their mean); Com = weighted F1 - 0.25 x MSE on MER2023's [-5, 5] scale.")
    table = pd.DataFrame(rows)
    write_dataframe(out / "table1.csv", table)
    atomic_write_text(out / "table1.md", _markdown(rows, structures, decoders, title, significance, note))
    result = {"title": title, "rows": rows, "fusion": fused, "significance": significance, "valence_source": str(base.model.valence_source),
              "valence_scale": list(scale), "inputs": {"acoustic": n_acoustic, "visual": n_visual}}
    write_json(out / "table1.json", result)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="a mer recipe, e.g. recipes/finetune/mer_crema_d.yaml")
    parser.add_argument("--structures", nargs="+", default=list(STRUCTURES), help="fusion structures to run (default: all three)")
    parser.add_argument("--decoders", nargs="+", default=list(DECODERS), help="decoders to run (default: baseline jdev)")
    parser.add_argument("--step", type=float, default=0.1, help="grid step of the fusion weights k1..k3 (default 0.1)")
    parser.add_argument("--reference", default=None, help="system tested against every other, e.g. fused_jdev (default), parallel_baseline")
    parser.add_argument("--metric", default="mer_score", help="score of the paired t-test: mer_score (default), weighted_f1, valence_mse or valence_nmse")
    parser.add_argument("--video-stores", nargs="+", default=[], help="face stores of several visual models (paper 5: two), stacked into OUT/video_stack")
    parser.add_argument("--alternative", default="two-sided", help="two-sided (default), greater or less (reference minus other)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of the paired t-test (default 0.05)")
    parser.add_argument("--force", action="store_true", help="recompute runs whose inputs changed (default: stop and say what changed)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the recipe, e.g. data.root=/data/CREMA-D splits.k=5")


def run(args: argparse.Namespace) -> int:
    result = mer_table(
        args.config, args.overrides, args.structures, args.decoders, args.step, args.reference, args.metric, args.alternative, args.alpha, args.force,
        args.video_stores,
    )
    for row in result["rows"]:
        print(f"{row['structure']:>12} {row['decoder']:>8}: weighted F1 {row['weighted_f1']:.4f}  MSE {row['valence_mse']:.4f}  "
              f"MSE/var {row['valence_nmse']:.4f}  MER {row['mer_score']:.4f}")
    return 0
