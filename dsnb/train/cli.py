"""Command-line fine-tuning: ``python -m dsnb.train CONFIG.yaml [--set [section.]field=value ...] [--resume auto]``.

The same ``dsnb.train.sft.run_sft`` the notebooks call, for runs outside Jupyter and on several
processes: under ``torchrun --nproc_per_node N -m dsnb.train ...`` or
``accelerate launch --config_file configs/accelerate/ddp.yaml -m dsnb.train ...`` each process
trains on its shard of every batch (DDP; gloo on CPU, NCCL on GPUs) and the effective batch is
per-device × accumulation × processes. On rank 0 it writes ``results.json`` (config, effective batch,
processes, losses) to the output directory. Taught in notebook 03 ("Scale it up").
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from dsnb.cache import follow_umask, write_json_atomic
from dsnb.train.config import ConfigError, FinetuneConfig
from dsnb.train.run import stage_runner
from dsnb.values import parse_value

logger = logging.getLogger(__name__)

RESULTS = "results.json"


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["max_steps=10", "optimisation.learning_rate=1e-5"]`` -> ``{"max_steps": 10, "optimisation.learning_rate":
    1e-05}`` (values by ``parse_value``); keys are checked where they are applied (``config.recipe_values``)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_value(value)
    return out


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> FinetuneConfig:
    """A recipe file (sectioned or flat) with ``--set`` overrides (``field`` or ``section.field`` keys) applied."""
    cfg = FinetuneConfig.from_yaml(path)
    return cfg.replace(**overrides) if overrides else cfg


def check_resume(resume: str | None) -> None:
    """``--resume``: ``auto`` or an existing checkpoint directory (checked before anything loads)."""
    if resume is None or resume == "auto":
        return
    path = Path(resume)
    if not path.exists():
        raise ConfigError(f"--resume {resume}: no such checkpoint directory; pass --resume auto (the newest complete "
                          "checkpoint in output_dir) or an existing output_dir/checkpoint-N directory")
    if not path.is_dir():
        raise ConfigError(f"--resume {resume}: is a file, not a checkpoint directory (checkpoint-N)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run one fine-tuning from a YAML recipe; return (and on rank 0 save) the results.

    A recipe or ``--resume`` that cannot work exits with status 2 and a message naming the file or field.
    """
    parser = argparse.ArgumentParser(prog="python -m dsnb.train", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a YAML recipe, e.g. configs/sft/tiny.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field, as field=value or section.field=value (repeatable)")
    parser.add_argument("--resume", default=None,
                        help="'auto' for the newest complete checkpoint in output_dir, or a checkpoint path")
    parser.add_argument("--log-level", default="WARNING")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=ns.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(ns.config, parse_overrides(ns.overrides))
        check_resume(ns.resume)
    except ConfigError as exc:
        parser.exit(2, f"{parser.prog}: {exc}\n")
    result = stage_runner(cfg.stage)(cfg, resume_from=ns.resume)  # run_sft, run_dpo (notebook 06), ...
    losses = result.train_losses[1]
    results = {
        "config": cfg.to_dict(),
        **{k: v for k, v in result.info.items() if isinstance(v, int | float | str | type(None))},
        "final_logged_loss": losses[-1] if losses else None,
        "log_history": result.log_history,
        "seconds": result.seconds,
    }
    if result.trainer.is_world_process_zero():
        result.trainer.save_model(str(Path(cfg.output_dir) / "final"))
        follow_umask(Path(cfg.output_dir) / "final")
        write_json_atomic(Path(cfg.output_dir) / RESULTS, results)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
