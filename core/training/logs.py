"""CSV training logs and their curve plots."""
from __future__ import annotations

import csv
from pathlib import Path


class CsvLog:
    """Append rows to a CSV file, writing the header once; flushed after each row."""

    def __init__(self, path: str | Path, fields: list[str], resume: bool = False):
        self.path = Path(path)
        self.fields = fields
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not (resume and self.path.exists())
        self._fh = open(self.path, "w" if new else "a", newline="")  # noqa: SIM115  (closed by close())
        self._writer = csv.DictWriter(self._fh, fieldnames=fields)
        if new:
            self._writer.writeheader()

    def write(self, **row) -> None:
        self._writer.writerow({k: row.get(k, "") for k in self.fields})
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def read_csv(path: str | Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def plot_curves(step_csv: str | Path, epoch_csv: str | Path, out_png: str | Path, title: str,
                step_key: str = "episode", smooth: int = 50, metric_name: str = "Dice",
                val_name: str = "validation Dice") -> Path:
    """Training loss/Dice per step (moving average) and validation Dice per epoch, in one figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps = read_csv(step_csv)
    epochs = read_csv(epoch_csv) if Path(epoch_csv).exists() else []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if steps:
        x = np.array([float(r[step_key]) for r in steps])
        for key, ax in (("loss", axes[0]), ("dice", axes[1])):
            y = np.array([float(r[key]) if r[key] not in ("", "nan") else np.nan for r in steps])
            ax.plot(x, y, color="0.8", lw=0.5, label=f"train {key} (per {step_key})")
            if len(y) >= smooth:
                k = np.ones(smooth) / smooth
                yy = np.convolve(np.nan_to_num(y, nan=np.nanmean(y)), k, mode="valid")
                ax.plot(x[smooth - 1:], yy, color="C0", label=f"moving mean ({smooth})")
    if epochs:
        ex = [float(r[f"last_{step_key}"]) for r in epochs]
        axes[1].plot(ex, [float(r["val_dice"]) for r in epochs], "o-", color="C3", label=val_name)
    axes[0].set(xlabel=step_key, ylabel="loss", title="training loss")
    axes[1].set(xlabel=step_key, ylabel=metric_name, title=f"{metric_name} / {val_name}")
    for ax in axes:
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
