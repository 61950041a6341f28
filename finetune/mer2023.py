"""`ssl-aver mer2023 --config RECIPE [key=value ...] [--force]`: MER2023's own protocol (paper 5's setting).

The MER2023 baseline (github zeroQiaoba/MERTools, MER2023/main-release.py) cross-validates on the
labelled training clips and never tunes on a test set:

1. The training clips are shuffled (`splits.seed`) and cut into `splits.k` folds (5 in MER2023) of
   near-equal size (`make_folds`; the baseline gives the remainder of N / k to its last fold, we
   spread it one clip per fold). Fold j's model trains on the other folds and is selected on fold j,
   its dev set (finetune's early stopping on the MER head's fixed criterion, cross-entropy + 0.25 x
   valence MSE; the baseline keeps the epoch of the best weighted F1 - 0.25 x MSE on that fold).
2. The folds are one `finetune()` run (OUT/folds) over clip-level splits (OUT/folds.csv): the test set
   of every split is every test clip with an emotion and a valence label, which finetune scores per
   fold as usual. Finished folds are reused while the run's inputs match, and `--force` recomputes.
3. Every fold model (`finetune.predict.load`) then predicts every clip of every fixed test set read
   (test1 = MER-MULTI, test2 = MER-NOISE, test3 = MER-SEMI; `data.options.partitions`), labelled or
   not, from the run's feature stores, audio-visual where a clip has both, otherwise from the one it
   has; a clip in neither store gets the fold's training prior (class shares, mean valence) and is
   listed under `no_features`. The fold predictions are averaged (class probabilities and valence)
   and the class is the argmax of the averaged probabilities, as the baseline does.
4. Scores per test set on its labelled clips: weighted F1 (sklearn), valence MSE and the MER score
   = weighted F1 - 0.25 x MSE (test3 carries class labels only: F1 alone, as the baseline reports
   it). The cross-validation row ("Train&Val" in paper 5's Table 1) is the baseline's: the mean over
   folds of each fold's weighted F1 and MSE on its held-out fold, and the score of those means.

Outputs in OUT: table.json and table.md (the scores), submission_<test>.csv (`name, discrete,
valence` for every clip of the test set: the challenge's submission format), predictions_<test>.csv
(the averaged class probabilities and valence) and predictions_train.csv (each training clip
predicted by the fold model that held it out).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ssl_aver.errors import UserError
from ssl_aver.io import write_dataframe, write_json

CORPUS = "mer2023"
TRAIN = "train"


def build_config(config: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """A fine-tuning recipe of the mer head on MER2023, checked for what the protocol needs."""
    from finetune.run import build_config as finetune_config

    cfg = finetune_config(config, overrides)
    if str(cfg.head) != "mer":
        raise UserError(f"ssl-aver mer2023 scores emotion and valence, which the mer head predicts; set head=mer (got {cfg.head})")
    if str(cfg.data.corpus) != CORPUS:
        raise UserError(f"ssl-aver mer2023 runs MER2023's protocol; set data.corpus=mer2023 (got {cfg.data.corpus})")
    if "valence" not in list(cfg.data.extra_targets or []):
        raise UserError("ssl-aver mer2023 trains on MER2023's rated valence; set data.extra_targets=[valence]")
    if cfg.splits.file:
        raise UserError(f"ssl-aver mer2023 makes its own folds of the training clips (splits.k, splits.seed); unset splits.file ({cfg.splits.file})")
    if str(cfg.splits.protocol) != "kfold":
        raise UserError(f"ssl-aver mer2023 cross-validates over the training clips; set splits.protocol=kfold (got {cfg.splits.protocol})")
    if int(cfg.splits.k) < 2:
        raise UserError(f"cross-validation needs splits.k >= 2 folds (MER2023: 5), got {cfg.splits.k}")
    return cfg


def make_folds(clips: Sequence[str], k: int, seed: int) -> list[list[str]]:
    """The training clips shuffled with `seed` and cut into k folds whose sizes differ by at most one."""
    unique = sorted(set(map(str, clips)))
    if len(unique) < k:
        raise UserError(f"{len(unique)} labelled training clips cannot fill splits.k={k} folds; lower splits.k")
    order = np.random.default_rng(seed).permutation(len(unique))
    return [sorted(unique[i] for i in part) for part in np.array_split(order, k)]


def fold_splits(folds: Sequence[Sequence[str]], test: Sequence[str], actors: dict[str, str]) -> list[Any]:
    """One clip-level split per fold: the other folds train, the fold itself is dev, `test` is test."""
    from ssl_aver.splits import ClipSplit

    splits = []
    for j, held_out in enumerate(folds):
        sets = {clip: "train" for i, fold in enumerate(folds) if i != j for clip in fold}
        sets.update({clip: "dev" for clip in held_out})
        sets.update({clip: "test" for clip in test})
        splits.append(ClipSplit(sets, actors))
    return splits


def predict_clips(model: Any, clips: Sequence[str], stores: dict[str, Path], device: Any, batch_size: int,
                  prior: tuple[np.ndarray, float]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Class probabilities [N, C] and valence [N] of `clips`, in order, audio-visual where a clip has
    both modalities, else from the one it has; a clip in neither store gets `prior` (class shares,
    valence) so a submission still covers it, and is listed in the third value."""
    import pandas as pd
    from torch.utils.data import DataLoader

    from ssl_aver.av_dataset import AVDataset

    from finetune.trainer import predict_outputs

    probs = np.tile(np.asarray(prior[0], np.float64), (len(clips), 1))
    valence = np.full(len(clips), float(prior[1]))
    dataset = AVDataset(pd.DataFrame({"clip": list(clips)}), [], audio=stores.get("audio"), video=stores.get("video"), require="any")
    found: list[str] = []
    if len(dataset):
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=dataset.collate)
        found, predicted, outputs = predict_outputs(model, loader, device, "multiclass", modality="av")
        rows = {clip: i for i, clip in enumerate(clips)}
        at = [rows[clip] for clip in found]
        probs[at] = predicted
        valence[at] = np.asarray(outputs["valence"], np.float64).reshape(-1)
    return probs, valence, sorted(set(clips) - set(found))


def scores(truth: Any, probs: np.ndarray, valence: np.ndarray, class_columns: Sequence[str], valence_column: str) -> dict[str, Any]:
    """Weighted F1 on the clips with a class label, valence MSE on those with a valence, MER score
    when both exist (None where a set has no such labels)."""
    from sklearn.metrics import f1_score

    from finetune.heads.mer import mer_score

    onehot = truth[list(class_columns)].to_numpy(np.float64)
    has_class = ~np.isnan(onehot).any(axis=1)
    rated = truth[valence_column].to_numpy(np.float64)
    has_valence = ~np.isnan(rated)
    out: dict[str, Any] = {"clips": int(len(truth)), "class_labelled": int(has_class.sum()), "valence_labelled": int(has_valence.sum()),
                           "weighted_f1": None, "valence_mse": None, "mer_score": None}
    if has_class.any():
        out["weighted_f1"] = float(f1_score(onehot[has_class].argmax(1), probs[has_class].argmax(1), average="weighted",
                                            labels=list(range(len(class_columns))), zero_division=0))
    if has_valence.any():
        out["valence_mse"] = float(np.mean((valence[has_valence] - rated[has_valence]) ** 2))
    if out["weighted_f1"] is not None and out["valence_mse"] is not None:
        out["mer_score"] = mer_score(out["weighted_f1"], out["valence_mse"])
    return out


def _frame(clips: Sequence[str], classes: Sequence[str], probs: np.ndarray, valence: np.ndarray) -> Any:
    import pandas as pd

    frame = pd.DataFrame(probs, columns=list(classes))
    frame.insert(0, "clip", list(clips))
    frame["valence"] = valence
    return frame


def _markdown(result: dict[str, Any]) -> str:
    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}"

    lines = [f"# MER2023 protocol: mer head, {result['folds']}-fold cross-validation on the training clips", "",
             "| set | clips | labelled | weighted F1 | valence MSE | MER score |", "| --- | --- | --- | --- | --- | --- |"]
    cv = result["cv"]
    lines.append(f"| train ({result['folds']}-fold CV, held-out folds) | {cv['clips']} | {cv['clips']} | {cell(cv['weighted_f1'])} | "
                 f"{cell(cv['valence_mse'])} | {cell(cv['mer_score'])} |")
    for name, test in result["tests"].items():
        lines.append(f"| {name} | {test['clips']} | {test['class_labelled']} | {cell(test['weighted_f1'])} | {cell(test['valence_mse'])} | "
                     f"{cell(test['mer_score'])} |")
    lines += ["", "MER score = weighted F1 - 0.25 x valence MSE (valence on [-5, 5]); test predictions average the fold models' "
              "class probabilities and valence; every test clip is in its submission_<test>.csv.", ""]
    return "\n".join(lines)


def mer2023(cfg: DictConfig, force: bool = False) -> dict[str, Any]:
    """Run MER2023's protocol (module docstring); returns what OUT/table.json holds."""
    import pandas as pd

    from finetune.data import load_task
    from finetune.heads.mer import mer_score
    from finetune.predict import load
    from finetune.run import finetune
    from ssl_aver.corpora.labelled import prepare_corpus
    from ssl_aver.splits import save_splits

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = prepare_corpus(CORPUS, str(cfg.data.root), **dict(cfg.data.options or {}))
    task = load_task(cfg.data)
    labels = task.labels
    classes, class_columns, valence_column = list(task.classes), list(task.targets), task.extra["valence"][0]
    train = labels.loc[labels["partition"] == TRAIN, "clip"].astype(str).tolist()
    if not train:
        raise UserError(f"no MER2023 training clip under {cfg.data.root} has an emotion and a valence label; keep train in data.options.partitions")
    test_sets = sorted(str(p) for p in corpus.clips["partition"].dropna().unique() if str(p) != TRAIN)
    if not test_sets:
        raise UserError(f"no MER2023 test set under {cfg.data.root}; add test1/test2/test3 to data.options.partitions")
    labelled_test = labels.loc[labels["partition"].isin(test_sets), "clip"].astype(str).tolist()
    if not labelled_test:
        raise UserError(f"no clip of {', '.join(test_sets)} has an emotion and a valence label, which each fold's fine-tuning run scores; "
                        "put the released test label files (e.g. test1-label.csv) beside the test folders")
    folds = make_folds(train, int(cfg.splits.k), int(cfg.splits.seed))
    actors = dict(zip(labels["clip"].astype(str), labels["actor"].astype(str)))
    split_file = save_splits(fold_splits(folds, labelled_test, actors), out / "folds.csv")
    run_dir = out / "folds"
    run = finetune(OmegaConf.merge(cfg, {"output_dir": str(run_dir), "splits": {"file": str(split_file)}}), force=force)
    stores = {m: Path(p) for m, p in run["stores"].items()}

    truth = corpus.clips.assign(clip=corpus.clips["clip"].astype(str)).set_index("clip")
    by_clip = labels.assign(clip=labels["clip"].astype(str)).set_index("clip")
    test_clips = {name: sorted(truth.index[truth["partition"] == name]) for name in test_sets}
    fold_probs = {name: np.zeros((len(folds), len(clips), len(classes))) for name, clips in test_clips.items()}
    fold_valence = {name: np.zeros((len(folds), len(clips))) for name, clips in test_clips.items()}
    no_features: dict[str, set[str]] = {name: set() for name in test_sets}
    held_out: dict[str, tuple[np.ndarray, float]] = {}
    per_fold = []
    batch = int(cfg.train.batch_size)
    for j, fold in enumerate(folds):
        predictor = load(run_dir, split=j, device=str(cfg.device), check_features=False)
        fold_train = by_clip.loc[[c for i, f in enumerate(folds) if i != j for c in f]]
        prior = (fold_train[class_columns].to_numpy(np.float64).mean(0), float(fold_train[valence_column].mean()))
        probs, valence, _ = predict_clips(predictor.model, fold, stores, predictor.device, batch, prior)
        held_out.update({clip: (p, v) for clip, p, v in zip(fold, probs, valence)})
        per_fold.append({"fold": j, **scores(by_clip.loc[fold], probs, valence, class_columns, valence_column)})
        for name, clips in test_clips.items():
            fold_probs[name][j], fold_valence[name][j], missing = predict_clips(predictor.model, clips, stores, predictor.device, batch, prior)
            no_features[name].update(missing)

    f1, mse = float(np.mean([f["weighted_f1"] for f in per_fold])), float(np.mean([f["valence_mse"] for f in per_fold]))
    result: dict[str, Any] = {
        "corpus": str(cfg.data.root), "folds": len(folds), "fold_sizes": [len(f) for f in folds], "fold_seed": int(cfg.splits.seed),
        "run": str(run_dir), "classes": classes,
        "cv": {"clips": len(train), "weighted_f1": f1, "valence_mse": mse, "mer_score": mer_score(f1, mse), "per_fold": per_fold},
        "tests": {}, "failures": corpus.failures,
    }
    write_dataframe(out / "predictions_train.csv", _frame(train, classes, np.stack([held_out[c][0] for c in train]), np.array([held_out[c][1] for c in train])))
    for name, clips in test_clips.items():
        probs, valence = fold_probs[name].mean(0), fold_valence[name].mean(0)
        write_dataframe(out / f"predictions_{name}.csv", _frame(clips, classes, probs, valence))
        submission = pd.DataFrame({"name": clips, "discrete": [classes[i] for i in probs.argmax(1)], "valence": valence})
        write_dataframe(out / f"submission_{name}.csv", submission)
        result["tests"][name] = {**scores(truth.loc[clips], probs, valence, class_columns, valence_column),
                                 "no_features": sorted(no_features[name]), "submission": f"submission_{name}.csv"}
    write_json(out / "table.json", result)
    (out / "table.md").write_text(_markdown(result), encoding="utf-8")
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="a mer recipe on MER2023, e.g. recipes/finetune/mer_mer2023.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.root=/data/MER2023 features.audio.store=STORE")
    parser.add_argument("--force", action="store_true", help="recompute folds whose inputs changed (default: stop and say what changed)")


def run(args: argparse.Namespace) -> int:
    result = mer2023(build_config(args.config, args.overrides), force=args.force)

    def show(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}"

    cv = result["cv"]
    print(f"train ({result['folds']}-fold CV): weighted F1 {show(cv['weighted_f1'])}  MSE {show(cv['valence_mse'])}  MER {show(cv['mer_score'])}")
    for name, test in result["tests"].items():
        print(f"{name}: {test['clips']} clips ({test['class_labelled']} labelled): weighted F1 {show(test['weighted_f1'])}  "
              f"MSE {show(test['valence_mse'])}  MER {show(test['mer_score'])} -> {Path(result['run']).parent / test['submission']}")
    return 0
