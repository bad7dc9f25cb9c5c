"""Plot a run's learning curves (history.csv) to a PNG with matplotlib."""

import csv
import os


def plot_history(run_dir, out_path=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(os.path.join(run_dir, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    epochs = [int(r["epoch"]) + 1 for r in rows]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("", "-"), ("val_", "--")):
        label = "validation" if split else "train"
        loss_axis.plot(epochs, [float(r[f"{split}loss"]) for r in rows], style, label=label)
        accuracy_axis.plot(epochs, [float(r[f"{split}accuracy"]) for r in rows], style,
                           label=label)
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
