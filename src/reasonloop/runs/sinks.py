"""Optional metric sinks (TensorBoard, Weights & Biases, MLflow) behind one interface.

The run store is always written; `run.report_to` adds sinks. Each sink gets every
`log(stage, step, metrics)` call the store gets, with keys prefixed by the stage name.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from reasonloop.errors import UserError


def _optional(module: str, sink: str, package: str):
    """Import an optional sink's library, or tell the user which package to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"run.report_to: {sink} needs `pip install {package}`") from None


class TensorBoardSink:
    def __init__(self, run_dir: Path):
        tensorboard = _optional("torch.utils.tensorboard", "tensorboard", "tensorboard")
        self.writer = tensorboard.SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, stage: str, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"{stage}/{key}", value, step)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, run_dir: Path):
        wandb = _optional("wandb", "wandb", "wandb")
        self.run = wandb.init(project="reasonloop", name=run_dir.name, dir=str(run_dir), resume="allow",
                              id=run_dir.name)

    def log(self, stage: str, step: int, metrics: dict[str, float]) -> None:
        self.run.log({f"{stage}/{k}": v for k, v in metrics.items()} | {f"{stage}/step": step})

    def close(self) -> None:
        self.run.finish()


class MlflowSink:
    def __init__(self, run_dir: Path):
        self.mlflow = mlflow = _optional("mlflow", "mlflow", "mlflow")
        mlflow.start_run(run_name=run_dir.name)

    def log(self, stage: str, step: int, metrics: dict[str, float]) -> None:
        self.mlflow.log_metrics({f"{stage}/{k}": v for k, v in metrics.items()}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


SINKS = {"tensorboard": TensorBoardSink, "wandb": WandbSink, "mlflow": MlflowSink}


def make_sinks(names: list[str], run_dir: Path) -> list:
    return [SINKS[name](Path(run_dir)) for name in names]
