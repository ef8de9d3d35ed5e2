"""A training run's record: the numbers ``metrics.json`` keeps, and the loss and accuracy plot
(``loss.png``) drawn from them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from localdistil.training.dataset import TrainingData


def run_metrics(trainer: Any, data: TrainingData, seconds: float,
                precision: str) -> dict[str, Any]:
    """What ``metrics.json`` holds of a finished training: losses against steps, tokens per
    second, and the dataset's report (the caller adds the accuracy evaluations and the gate)."""
    history = trainer.state.log_history
    train_loss = [{"step": h["step"], "loss": h["loss"]} for h in history if "loss" in h]
    # the held-out loss once per step (a step can be evaluated twice: at an epoch's end too)
    eval_by_step = {h["step"]: h["eval_loss"] for h in history if "eval_loss" in h}
    eval_loss = [{"step": step, "loss": loss} for step, loss in eval_by_step.items()]
    steps = trainer.state.global_step
    epochs_done = trainer.state.epoch or 0.0
    # TRL counts the real (non-padding) tokens it fed, since the start of the run
    trained_tokens = int(max((h["num_tokens"] for h in history if "num_tokens" in h), default=0))
    report = data.report
    return {
        "steps": steps,
        "epochs": round(epochs_done, 3),
        "precision": precision,
        "learning_rate": trainer.args.learning_rate,
        "max_steps": trainer.state.max_steps,
        "train_examples": len(data.train),
        "eval_examples": report.eval_examples,
        "train_loss": train_loss,
        "eval_loss": eval_loss,
        "first_loss": train_loss[0]["loss"] if train_loss else None,
        "final_loss": train_loss[-1]["loss"] if train_loss else None,
        "final_eval_loss": eval_loss[-1]["loss"] if eval_loss else None,
        "train_seconds": round(seconds, 2),
        "trained_tokens": trained_tokens,
        "tokens_per_second": (round(trained_tokens / seconds, 1)
                              if seconds > 0 and trained_tokens else None),
        "dataset": {
            "records_read": report.selection.read,
            "invalid_lines": len(report.selection.problems),
            "duplicates_removed": report.selection.duplicates,
            "too_long": report.too_long,
            "token_lengths": report.lengths,
        },
    }


def plot_losses(metrics: dict[str, Any], path: Path) -> None:
    """Draw the train (and eval) loss against the step into a PNG, and beside it the held-out
    exact match and valid rate of the evaluations during training (when there were any), with
    the gate's ``min_exact`` and the state kept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    accuracy = metrics.get("accuracy") or []
    figure, panels = plt.subplots(1, 2 if accuracy else 1, figsize=(11 if accuracy else 6, 3.5),
                                  dpi=100, squeeze=False)
    axes = panels[0][0]
    for key, label in (("train_loss", "train"), ("eval_loss", "eval")):
        points = metrics.get(key) or []
        if points:
            axes.plot([p["step"] for p in points], [p["loss"] for p in points],
                      marker="o" if key == "eval_loss" else None, label=label)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_yscale("log")
    axes.legend()
    axes.grid(alpha=0.3)
    if accuracy:
        axes = panels[0][1]
        steps = [e["step"] for e in accuracy]
        axes.plot(steps, [e["exact_match"] for e in accuracy], marker="o",
                  label="held-out exact match")
        axes.plot(steps, [e["valid_rate"] for e in accuracy], marker=".", linestyle="--",
                  label="valid")
        gate = metrics.get("gate_min_exact")
        if gate is not None:
            axes.axhline(gate, color="grey", linewidth=0.8, linestyle=":", label="gate.min_exact")
        if metrics.get("best_step") is not None:
            axes.axvline(metrics["best_step"], color="green", linewidth=0.8, label="kept")
        axes.set_xlabel("step")
        axes.set_ylim(-0.03, 1.03)
        axes.legend(fontsize="small")
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
