"""Run pretraining from a recipe: `accelerate launch recipes/pretrain.py --config recipes/pretrain/demo.yaml key=value ...`.

A thin script over ssl_aver.pretrain (the same function as `python -m ssl_aver.pretrain` and
`ssl-aver pretrain`), so accelerate can launch it by path.
"""

from ssl_aver.pretrain import main

if __name__ == "__main__":
    raise SystemExit(main())
