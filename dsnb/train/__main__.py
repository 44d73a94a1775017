"""``python -m dsnb.train RECIPE.yaml``: the fine-tuning command line (``dsnb.train.cli``)."""

from dsnb.train.cli import main

main()
