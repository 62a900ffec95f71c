"""Trainer.validate: the metrics the calibration study and the demo read (names and values), pinned on a tiny case.

The engine is scripted (known completions, so known correctness and stated confidences); every expected number is
recomputed here from first principles: the log-probs by one plain forward pass of the checkpoint per row, the
metrics by `capojax.metrics`. The sampling seeds of the validation chunks are pinned too: the same model must always
draw the same validation samples (`rollout.val_seed`), whatever the refactoring.
"""

import importlib.util
import pathlib

import jax
import numpy as np
import pytest

from capojax import metrics
from capojax.rollout.base import Rollout
from capojax.trainer import loop

ROOT = pathlib.Path(__file__).resolve().parents[2]

# The keys the study (capojax.study) and the demo (README, tests/test_demo.py) read, plus the rest validate logs.
CALIBRATION_KEYS = ("n", "accuracy", "mean_confidence", "auroc", "auc_mean", "n_mixed", "ece", "pce", "brier", "aupc")
EXPECTED_KEYS = (
    {f"val/{k}" for k in CALIBRATION_KEYS}
    | {f"val/stated/{k}" for k in CALIBRATION_KEYS}
    | {"val/entropy", "val/accuracy_se", "val/lpm/correct", "val/lpm/wrong", "val/lpm/group_sd", "timing/validation"}
)


def _config(model_path):
    spec = importlib.util.spec_from_file_location("tiny_grpo", ROOT / "configs" / "tiny_grpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.model.path = str(model_path)
    config.mesh.fsdp = 2  # rows split over 2 devices, as on a real mesh
    config.train.steps, config.train.prompts_per_step, config.train.ppo_mini_batch = 1, 4, 2
    config.rollout.n, config.rollout.max_new_tokens = 2, 64
    config.rollout.val_n, config.rollout.val_seed = 2, 7
    config.data.holdout = 6  # two validation chunks: 4 prompts, then 2
    config.data.template = "dcpo"  # GRPO on DCPO's template: the stated confidence is logged (val/stated/*)
    return config


class ScriptedEngine:
    """Answers prompt i, sample j with `texts(i, j)`; records the prompts and sampling params of each call."""

    def __init__(self, tokenizer, prompt_order, texts, pad_id):
        self.tokenizer, self.texts, self.pad_id = tokenizer, texts, pad_id
        self.index = {tuple(p): i for i, p in enumerate(prompt_order)}
        self.calls = []

    def generate(self, prompts, params):
        self.calls.append(([self.index[tuple(p)] for p in prompts], params))
        ids = [self.tokenizer.encode(self.texts(self.index[tuple(p)], j), add_special_tokens=False)
               for p in prompts for j in range(params.n)]
        T = params.max_new_tokens
        tokens = np.full((len(ids), T), self.pad_id, np.int32)
        for r, row in enumerate(ids):
            assert len(row) <= T
            tokens[r, : len(row)] = row
        lengths = np.array([len(r) for r in ids], np.int32)
        return Rollout(tokens=tokens, logprobs=np.zeros((len(ids), T), np.float32),
                       mask=np.arange(T)[None] < lengths[:, None], lengths=lengths, finished=np.ones(len(ids), bool),
                       prompt_index=np.repeat(np.arange(len(prompts)), params.n), pad_id=self.pad_id)

    def update_weights(self, params):
        return {}

    def close(self):
        pass


# Prompt i, sample j: right or wrong, stated confidence or none (sample 1 of prompt 2 states none).
RIGHT = {(0, 0): True, (0, 1): False, (1, 0): True, (1, 1): True, (2, 0): False, (2, 1): True,
         (3, 0): False, (3, 1): False, (4, 0): True, (4, 1): False, (5, 0): False, (5, 1): True}
STATED = {(0, 0): 0.9, (0, 1): 0.4, (1, 0): 0.8, (1, 1): 0.7, (2, 0): 0.6, (2, 1): None,
          (3, 0): 0.3, (3, 1): 0.55, (4, 0): 0.65, (4, 1): 0.2, (5, 0): 0.5, (5, 1): 0.95}


def _text(gold, i, j):
    answer = gold if RIGHT[i, j] else f"{gold}0"
    steps = " ".join(["So"] * (1 + (i + j) % 3))  # rows of different lengths
    stated = "" if STATED[i, j] is None else f"\nCONFIDENCE: {STATED[i, j]}"
    return f"{steps} \\boxed{{{answer}}}{stated}"


def _reference_logprobs(model, prompt, completion):
    """log p and entropy of each completion token under one unpadded forward pass at temperature 1 -> f64[T] x 2."""
    tokens = np.asarray([list(prompt) + list(completion)], np.int32)
    logits = np.asarray(model(tokens), np.float64)[0, len(prompt) - 1 : -1]
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    logp_all = logits - logz[:, None]
    logp = logp_all[np.arange(len(completion)), completion]
    entropy = -(np.exp(logp_all) * logp_all).sum(-1)
    return logp, entropy


@pytest.fixture(scope="module")
def validated(tiny_base, tmp_path_factory):
    trainer = loop.Trainer(_config(tiny_base), str(tmp_path_factory.mktemp("run")))
    try:
        val = trainer.data.val
        golds = [str(e.answer) for e in val]
        engine = ScriptedEngine(trainer.tokenizer, [e.prompt_ids for e in val],
                                lambda i, j: _text(golds[i], i, j), trainer.special.pad_id)
        trainer.engine.close()
        trainer.engine = engine
        out = trainer.validate()
        yield trainer, engine, out
    finally:
        trainer.close()


def test_validate_logs_exactly_the_pinned_keys(validated):
    _, _, out = validated
    assert set(out) == EXPECTED_KEYS


def test_validation_samples_in_prompt_chunks_with_the_fixed_seed(validated):
    trainer, engine, _ = validated
    config = trainer.config
    assert [prompts for prompts, _ in engine.calls] == [[0, 1, 2, 3], [4, 5]]
    key = jax.random.key(int(config.rollout.val_seed))
    for (_, params), first in zip(engine.calls, (0, 4)):
        seed = int(jax.random.randint(jax.random.fold_in(key, first), (), 0, 2**31 - 1))
        assert (params.seed, params.n, params.temperature) == (seed, 2, float(config.rollout.val_temperature))
        assert (params.max_new_tokens, params.top_p) == (64, float(config.rollout.top_p))
        assert params.stop_token_ids == tuple(trainer.special.eos_ids)


def test_validate_metrics_equal_a_from_scratch_computation(validated, tiny_base):
    from capojax.models import load_pretrained

    trainer, _, out = validated
    model, _ = load_pretrained(tiny_base)  # float32, as the tiny config; the trainer has not updated it
    val = trainer.data.val
    B, n = len(val), 2
    correct = np.array([[RIGHT[i, j] for j in range(n)] for i in range(B)])
    stated = np.array([[np.nan if STATED[i, j] is None else STATED[i, j] for j in range(n)] for i in range(B)])
    lpm = np.zeros((B, n))
    entropy_sum, tokens = 0.0, 0
    for i, e in enumerate(val):
        for j in range(n):
            completion = trainer.tokenizer.encode(_text(str(e.answer), i, j), add_special_tokens=False)
            logp, entropy = _reference_logprobs(model, e.prompt_ids, completion)
            lpm[i, j] = logp.mean()
            entropy_sum += entropy.sum()
            tokens += len(completion)

    expected = {f"val/{k}": v for k, v in metrics.calibration_summary(np.exp(lpm), correct).items()}
    expected.update({f"val/stated/{k}": v for k, v in metrics.calibration_summary(stated, correct).items()})
    expected["val/entropy"] = entropy_sum / tokens
    per_prompt = correct.mean(axis=1)
    expected["val/accuracy_se"] = per_prompt.std(ddof=1) / np.sqrt(B)
    expected["val/lpm/correct"] = lpm[correct].mean()
    expected["val/lpm/wrong"] = lpm[~correct].mean()
    expected["val/lpm/group_sd"] = np.mean(lpm.std(axis=1, ddof=1))

    # Counts and accuracies are exact; everything computed from log-probs within the whole-model float32 tolerance.
    for key in ("val/n", "val/accuracy", "val/n_mixed", "val/accuracy_se", "val/stated/n", "val/stated/accuracy",
                "val/stated/n_mixed"):
        assert out[key] == pytest.approx(expected[key], abs=1e-12), key
    assert out["val/accuracy"] == 0.5 and out["val/n_mixed"] == 4 and out["val/stated/n"] == 11
    for key in sorted(set(expected) - {"timing/validation"}):
        np.testing.assert_allclose(out[key], expected[key], rtol=1e-4, atol=1e-4, err_msg=key)
    assert out["timing/validation"] > 0
