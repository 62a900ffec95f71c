"""capojax: RL from verifiable rewards for calibrated reasoning models (GRPO, CAPO, DCPO) in JAX."""

__version__ = "0.1.0"
