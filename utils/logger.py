"""Run logging: metrics.jsonl + a PNG of the curves (always), and Weights & Biases (online/offline/off)."""

import json
import math
import netrc
import os
from pathlib import Path

from env.errors import UserInputError

WANDB_MODES = ("auto", "online", "offline", "disabled")


def _has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class RunLogger:
    def __init__(self, run_dir, run_name: str, config: dict, wandb_cfg, wandb_id: str | None = None):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.wandb = None
        mode = wandb_cfg.mode
        if mode not in WANDB_MODES:
            raise UserInputError(f"wandb.mode must be one of {WANDB_MODES}, got '{mode}'")
        if mode == "auto":
            mode = "online" if _has_wandb_credentials() else "offline"
        if mode != "disabled":
            import wandb

            self.wandb = wandb.init(project=wandb_cfg.project, entity=wandb_cfg.entity, name=run_name,
                                    id=wandb_id, resume="allow", config=config, dir=str(self.run_dir), mode=mode)
            if mode == "offline":
                print(f"[wandb] offline (no API key found). Upload later with: wandb sync {Path(self.wandb.dir).parent}")
        self.wandb_id = self.wandb.id if self.wandb else None

    def log(self, metrics: dict, iteration: int):
        row = {"iteration": iteration, **metrics}
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.wandb:
            self.wandb.log(metrics, step=iteration)

    def log_video(self, path, iteration: int):
        if self.wandb:
            import wandb

            self.wandb.log({"eval/video": wandb.Video(str(path), format="mp4")}, step=iteration)

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def plot_curves(self):
        """training_curves.png: loss terms, validation loss and simulator success against iterations."""
        import matplotlib.pyplot as plt

        figure = draw_curves(self.read_metrics())
        figure.savefig(self.run_dir / "training_curves.png", dpi=100)
        plt.close(figure)

    def finish(self):
        if self.wandb:
            self.wandb.finish()


def draw_curves(rows: list[dict]):
    """The figure of training_curves.png from metrics rows: one panel per group of series. A series of one point
    (a short run, a single evaluation) is drawn as a marker, since a line through one point is invisible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("L1 loss", ["train/l1", "val/l1", "val/l1_posterior"]), ("KL", ["train/kl", "val/kl"]),
              ("learning rate", ["train/lr"]), ("success rate", ["eval/success_once", "eval/success_at_end"])]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    for axis, (title, keys) in zip(axes, panels):
        for key in keys:
            points = [(r["iteration"], r[key]) for r in rows if key in r and math.isfinite(r[key])]
            if points:
                marked = key.startswith("eval") or len(points) == 1
                axis.plot(*zip(*points), marker="o" if marked else None, markersize=3, label=key)
        axis.set_title(title)
        axis.set_xlabel("iteration")
        if title.endswith("loss") or title == "KL":
            axis.set_yscale("log")
        if any(key in r for r in rows for key in keys):
            axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


class NullLogger:
    """What ranks other than 0 log to under torchrun: nothing (rank 0 writes for everyone)."""

    wandb_id = None

    def log(self, metrics: dict, iteration: int):
        pass

    def log_video(self, path, iteration: int):
        pass

    def plot_curves(self):
        pass

    def finish(self):
        pass
