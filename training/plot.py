"""Plot a run's learning curves (history.csv) to a PNG with matplotlib."""

import csv
import os


def read_history(run_dir):
    """The run's history.csv as {column: [value per epoch]} (every run of it, resumed
    ones included); epochs count from 0."""
    path = os.path.join(run_dir, "history.csv")
    if not os.path.exists(path):
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {key: [round(float(row[key]), 5) if key != "epoch" else int(row[key])
                  for row in rows] for key in (rows[0] if rows else {})}


def plot_history(run_dir, out_path=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = read_history(run_dir)
    epochs = [epoch + 1 for epoch in history["epoch"]]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("", "-"), ("val_", "--")):
        label = "validation" if split else "train"
        loss_axis.plot(epochs, history[f"{split}loss"], style, label=label)
        accuracy_axis.plot(epochs, history[f"{split}accuracy"], style, label=label)
    loss_axis.set(xlabel="epoch", ylabel="label-smoothed cross-entropy", title="loss")
    accuracy_axis.set(xlabel="epoch", ylabel="token accuracy", title="accuracy")
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    out_path = out_path or os.path.join(run_dir, "learning_curve.png")
    figure.savefig(out_path, dpi=100)
    plt.close(figure)
    return out_path
