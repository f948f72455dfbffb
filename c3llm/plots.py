"""The pictures of the application: a training loss curve and audio spectrograms (PNG, with matplotlib's Agg
backend, so no screen is needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_loss(log_history: list[dict], path: Path) -> None:
    """The training losses of a Trainer log history against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in ("loss", "lm_loss", "nar_loss", "masked_loss"):
        points = [(r["step"], r[key]) for r in log_history if key in r and "step" in r]
        if points:
            ax.plot(*zip(*points), label=key)
    ax.set(xlabel="step", ylabel="cross-entropy", title="C3LLM demo training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_spectrograms(items: list[tuple[str, np.ndarray]], sampling_rate: int, path: Path) -> None:
    """One spectrogram row per (title, mono waveform), up to 4 kHz. Uses matplotlib's object API, not pyplot's global
    state, so several threads (the web app's requests) can draw at once."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 1.8 * len(items)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(items), 1, squeeze=False)
    for ax, (title, wave) in zip(axes[:, 0], items):
        ax.specgram(wave, Fs=sampling_rate, NFFT=512, noverlap=384, cmap="magma")
        ax.set_title(title, fontsize=8)
        ax.set_ylim(0, 4000)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
