"""The `ssl-aver` command line (`python -m ssl_aver.app.cli` runs the same).

Subcommands live in their own modules and are imported only when run, so `ssl-aver --help`
is instant. A module in the registry provides `add_arguments(parser)` and `run(args) -> int`
(`ssl_aver.command.run_command` runs it). Adding a command is one registry line.
"""

from __future__ import annotations

import sys
from typing import Sequence

from ssl_aver.command import run_command

#: command name -> (module providing add_arguments/run, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo-corpus": ("ssl_aver.app.demo_corpora.generate", "generate the offline demo corpora (unlabeled AV clips + CREMA-D mini)"),
    "demo": ("ssl_aver.app.demo", "run every pipeline stage end to end on the demo data"),
    "scan": ("ssl_aver.corpora.folder", "scan a folder of media into a manifest CSV"),
    "landmarks": ("ssl_aver.face", "68-point face landmark tracks of videos (offline mediapipe FaceMesh, fitted to dlib)"),
    "pretext": ("pretext.build", "pretext pseudo-labels + window store: pretext build / finalize / bench"),
    "pretrain": ("ssl_aver.pretrain", "multi-task SSL pretraining of the acoustic encoder (accelerate)"),
    "crema-d": ("ssl_aver.crema_d_labels", "CREMA-D labels from rating counts (labels) and speaker-independent splits (splits)"),
    "splits": ("ssl_aver.splits_import", "published clip-level partitions (one CSV per split, e.g. paper 2's) -> a splits file (splits import)"),
    "features": ("ssl_aver.features.extract", "extract frame-level audio/face features of a corpus into a feature store"),
    "finetune": ("finetune.run", "fine-tune a head (ser, vavl, two_stage, raver, mer) on CREMA-D over K speaker-independent splits"),
    "experiment": ("finetune.experiment", "compare systems (supervised, wav2vec2, pretext) on shared splits: paper 1 Table 2"),
    "ablate": ("finetune.ablate", "pretrain + fine-tune each pretext task set (SSL1-SSL5): paper 1 Table 3"),
    "two-stage-tables": ("finetune.two_stage_tables", "train paper 3's models 1-12 and write its Tables 1, 3, 4-5 with bootstrap intervals"),
    "mer-table": ("finetune.mer_fusion", "MER joint emotion/valence decoding: every AFG structure x decoder, decision-level fusion, Table 1"),
    "mer2023": ("finetune.mer2023", "MER2023's protocol: k-fold CV on the training clips, fold-averaged test1/2/3 predictions, scores, submissions"),
    "compare": ("finetune.compare", "published systems (UAVM, AuxFormer, MulT, SFAV, TSLTM, ...) side by side on shared splits: papers 2-4's tables"),
    "shared-layers": ("finetune.shared_layers", "cosine distance of audio vs video embeddings at the shared layers of VAVL / AuxFormer / UAVM runs (paper 2, Fig. 2)"),
    "robustness": ("finetune.robustness", "missing-modality tests of fine-tuned runs (frame masking, Markov packet loss) + context sweep"),
    "evaluate": ("ssl_aver.evaluate", "metrics, fairness and bootstrap CIs of predictions against labels"),
    "predict": ("finetune.predict", "predict emotions of media files with a fine-tuned run (per clip or per 2 s window) -> CSV"),
    "bench": ("ssl_aver.app.bench", "speed of every stage against its goal, on generated data: bench.json + bench.md"),
}


def _print_commands() -> None:
    print("usage: ssl-aver COMMAND [options]   (ssl-aver COMMAND --help for its options)\n")
    print("commands:")
    width = max(len(name) for name in COMMANDS)
    for name, (_, help_text) in COMMANDS.items():
        print(f"  {name:<{width}}  {help_text}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        _print_commands()
        return 0
    if argv[0] in ("-V", "--version"):
        from ssl_aver import __version__

        print(f"ssl-aver {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        sys.stderr.write(f"ssl-aver: error: unknown command '{name}'; choose one of: {', '.join(COMMANDS)}\n")
        return 2
    return run_command(name, COMMANDS[name][0], COMMANDS[name][1], argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
