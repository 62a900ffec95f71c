"""capojax.eval_pipeline: sample (per chunk, own params) -> score (each chunk as it arrives) -> grade -> val/* metrics."""

import numpy as np
import pytest
from flax import nnx

from capojax import eval_pipeline, metrics
from capojax.models import PRESETS, init_model
from capojax.rollout.base import Rollout, SamplingParams

CONFIG = PRESETS["tiny-bench"].replace(num_layers=2, hidden_size=64, intermediate_size=128, num_heads=2,
                                       num_kv_heads=1, head_dim=32, vocab_size=97)


def _rollout(lengths, prompt_index, width=6, pad_id=0, seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths, np.int32)
    mask = np.arange(width)[None] < lengths[:, None]
    tokens = np.where(mask, rng.integers(1, CONFIG.vocab_size, (len(lengths), width)), pad_id).astype(np.int32)
    logprobs = np.where(mask, -rng.random((len(lengths), width)), 0.0).astype(np.float32)
    return Rollout(tokens, logprobs, mask, lengths, np.ones(len(lengths), bool), np.asarray(prompt_index, np.int32),
                   pad_id=pad_id)


class FakeEngine:
    """Samples random tokens; logs each call in `events`."""

    def __init__(self, events, width=6):
        self.events, self.width = events, width

    def generate(self, prompts, params):
        self.events.append(("sample", len(prompts), params.seed))
        lengths = [1 + (len(p) + j) % self.width for p in prompts for j in range(params.n)]
        return _rollout(lengths, np.repeat(np.arange(len(prompts)), params.n), self.width, seed=params.seed)


class FakeScorer:
    """lpm = -(row length) / 10; logs each call in `events`."""

    def __init__(self, events):
        self.events = events

    def __call__(self, prompts, rollout):
        self.events.append(("score", len(prompts)))
        return eval_pipeline.Scored(lpm=-rollout.lengths / 10.0, entropy_sum=float(rollout.lengths.sum()),
                                    tokens=int(rollout.lengths.sum()))


class FakeTokenizer:
    """Decodes a row to a boxed answer: its first token's parity."""

    def batch_decode(self, rows, skip_special_tokens=True):
        return [f"\\boxed{{{row[0] % 2}}}" for row in rows]


def test_concat_rollouts_offsets_prompts_and_pads_to_the_widest_chunk():
    a = _rollout([2, 3], [0, 0], width=3)
    b = _rollout([5, 1, 4, 2], [0, 0, 1, 1], width=5, pad_id=0)
    out = eval_pipeline.concat_rollouts([(0, a), (1, b)])
    assert out.tokens.shape == (6, 5) and out.prompt_index.tolist() == [0, 0, 1, 1, 2, 2]
    np.testing.assert_array_equal(out.tokens[:2, :3], a.tokens)
    assert (out.tokens[:2, 3:] == 0).all() and not out.mask[:2, 3:].any() and (out.logprobs[:2, 3:] == 0).all()
    np.testing.assert_array_equal(out.tokens[2:], b.tokens)
    assert out.lengths.tolist() == [2, 3, 5, 1, 4, 2]


def test_run_samples_in_chunks_and_scores_each_chunk_before_sampling_the_next():
    events = []
    prompts = [[1] * k for k in (3, 4, 5, 6, 7)]
    golds = ["0", "1", "0", "1", "0"]
    samples = eval_pipeline.run(
        FakeEngine(events), prompts, golds, FakeTokenizer(), n=2, chunk_size=2,
        params_for=lambda first: SamplingParams(n=2, max_new_tokens=6, seed=100 + first),
        scorer=FakeScorer(events), grading=eval_pipeline.Grading(timeout=30.0, workers=0, require_boxed=True),
    )
    assert events == [("sample", 2, 100), ("score", 2), ("sample", 2, 102), ("score", 2), ("sample", 1, 104),
                      ("score", 1)]
    rollout = samples.rollout
    assert rollout.num_rows == 10 and rollout.prompt_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    np.testing.assert_allclose(samples.lpm, -rollout.lengths / 10.0)
    assert samples.tokens == rollout.lengths.sum() and samples.entropy_sum == rollout.lengths.sum()
    # grading: each row against its own prompt's gold
    parity = (rollout.tokens[:, 0] % 2).astype(str)
    assert samples.graded.correct.tolist() == [p == golds[i] for p, i in zip(parity, rollout.prompt_index)]
    assert np.isnan(samples.graded.confidence).all()  # not asked for
    assert set(samples.timings) == {"sample", "score", "grade"}
    assert samples.grid(samples.lpm).shape == (5, 2)


def test_run_refuses_mismatched_golds_and_short_rollouts():
    kwargs = dict(n=2, chunk_size=2, params_for=lambda first: SamplingParams(n=2), scorer=FakeScorer([]),
                  grading=eval_pipeline.Grading(timeout=30.0, workers=0))
    with pytest.raises(ValueError, match="2 prompts but 1 gold answers"):
        eval_pipeline.run(FakeEngine([]), [[1], [2]], ["0"], FakeTokenizer(), **kwargs)
    with pytest.raises(ValueError, match="10 rows for 2 prompts x n=3"):  # the engine samples 5 per prompt
        eval_pipeline.run(FakeEngine([]), [[1], [2]], ["0", "1"], FakeTokenizer(),
                          **{**kwargs, "n": 3, "params_for": lambda first: SamplingParams(n=5)})


@pytest.fixture(scope="module")
def model():
    return init_model(CONFIG, seed=1)


def _reference_lpm(model, prompt, completion):
    import jax

    tokens = np.asarray([list(prompt) + list(completion)], np.int32)
    logp = np.asarray(jax.nn.log_softmax(model(tokens), -1), np.float64)[0, len(prompt) - 1 : -1]
    return logp[np.arange(len(completion)), completion].mean()


def test_teacher_forced_scores_equal_one_plain_forward_pass_per_row(model):
    from capojax.trainer.logprobs import make_logprob_fn

    graphdef, params = nnx.split(model)
    fn = make_logprob_fn(graphdef, temperature=1.0)
    prompts = [[5, 6, 7], [8], [9, 10]]
    rollout = _rollout([3, 6, 1, 0, 4, 2], [0, 0, 1, 1, 2, 2], width=6, seed=4)
    whole = eval_pipeline.TeacherForced(fn, params, pad_id=0)(prompts, rollout)
    expected = [_reference_lpm(model, prompts[i], rollout.tokens[r, : rollout.lengths[r]])
                if rollout.lengths[r] else 0.0 for r, i in enumerate(rollout.prompt_index)]
    np.testing.assert_allclose(whole.lpm, expected, atol=1e-5)
    assert whole.tokens == 16 and np.isfinite(whole.entropy_sum) and whole.entropy_sum > 0
    # batches of 4 rows (the last one filled with repeats) at a fixed shape, without entropy: the same lpm
    fixed_fn = make_logprob_fn(graphdef, temperature=1.0, with_entropy=False, time_chunk=4)
    batched = eval_pipeline.TeacherForced(fixed_fn, params, pad_id=0, rows_per_batch=4, prompt_len=8,
                                          length=10)(prompts, rollout)
    np.testing.assert_allclose(batched.lpm, whole.lpm, atol=1e-5)
    assert batched.tokens == 16 and np.isnan(batched.entropy_sum)


def test_server_scores_average_the_servers_prompt_logprobs_over_the_completion():
    class Client:
        def prompt_logprobs(self, tokens):  # log p(token t | before), t >= 1: here -token/100
            return [-t / 100 for t in tokens[1:]]

    prompts = [[5, 6], [7]]
    rollout = _rollout([3, 0, 2, 1], [0, 0, 1, 1], width=4, seed=2)
    scored = eval_pipeline.ServerScored(Client(), max_concurrency=2)(prompts, rollout)
    for r, i in enumerate(rollout.prompt_index):
        expected = -rollout.tokens[r, : rollout.lengths[r]].mean() / 100 if rollout.lengths[r] else np.nan
        np.testing.assert_allclose(scored.lpm[r], expected, rtol=1e-6)
    assert scored.tokens == 6 and np.isnan(scored.entropy_sum)


def _samples(correct, lpm, confidence, entropy_sum=6.0, tokens=4):
    correct, lpm = np.asarray(correct, bool), np.asarray(lpm, np.float32)
    B, n = correct.shape
    from capojax.trainer.scoring import Graded

    graded = Graded(texts=[""] * B * n, correct=correct.ravel(), extracted=[None] * B * n,
                    timed_out=np.zeros(B * n, bool), confidence=np.asarray(confidence, np.float32).ravel(),
                    timeouts=0, crashes=0)
    return eval_pipeline.Samples(prompts=[[1]] * B, n=n, rollout=None, lpm=lpm.ravel(), entropy_sum=entropy_sum,
                                 tokens=tokens, graded=graded, timings={})


def test_validation_metrics_of_known_samples():
    correct = [[True, False, True], [False, False, False]]
    lpm = [[-0.1, -2.0, -0.5], [-1.0, -3.0, -0.2]]
    out = eval_pipeline.validation_metrics(_samples(correct, lpm, np.full((2, 3), np.nan)))
    expected = metrics.calibration_summary(np.exp(np.asarray(lpm, np.float32)), np.asarray(correct))
    assert {k: out[f"val/{k}"] for k in expected} == expected
    assert out["val/accuracy"] == pytest.approx(2 / 6) and out["val/n_mixed"] == 1
    assert out["val/entropy"] == 1.5
    assert out["val/accuracy_se"] == pytest.approx(np.std([2 / 3, 0], ddof=1) / np.sqrt(2))
    assert out["val/lpm/correct"] == pytest.approx(-0.3) and out["val/lpm/wrong"] == pytest.approx(-1.55)
    assert out["val/lpm/group_sd"] == pytest.approx(np.mean([np.std(row, ddof=1) for row in lpm]), rel=1e-6)
    assert not any(k.startswith("val/stated/") for k in out)  # no stated confidence, no stated view


def test_validation_metrics_add_the_stated_view_and_leave_undefined_ones_nan():
    stated = [[0.9, np.nan]]
    out = eval_pipeline.validation_metrics(_samples([[True, False]], [[-0.1, -0.2]], stated, tokens=0))
    assert out["val/stated/n"] == 1 and out["val/stated/accuracy"] == 1.0 and out["val/entropy"] == 6.0
    assert np.isnan(out["val/accuracy_se"])  # one prompt: no spread to estimate it from
    one_sample = eval_pipeline.validation_metrics(_samples([[True], [False]], [[-0.1], [-0.2]], [[np.nan]] * 2))
    assert np.isnan(one_sample["val/lpm/group_sd"])
