"""The SFT stage: loss goes down, the saved folder loads with capojax.models.load_pretrained, cache + decoder work."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from capojax import sft
from capojax.data import synthetic
from capojax.rollout.sampler import pad_prompts

# Small enough for a fast CPU test; same code path as the real base.
TINY = sft.SFTSettings(hidden_size=64, num_layers=2, num_heads=1, num_kv_heads=1, intermediate_size=128, steps=40,
                       batch_size=16, lr=3e-3, max_ops=2, eval_problems=8)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    path = sft.ensure_tiny_base(cache, TINY, evaluate=False)
    return cache, path


def test_short_run_lowers_the_loss_and_saves_hf_folder(built):
    _, path = built
    report = json.loads(open(os.path.join(path, "sft_report.json")).read())
    assert report["loss_last"] < 0.6 * report["loss_first"], report
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert os.path.isfile(os.path.join(path, f)), f
    cfg = json.loads(open(os.path.join(path, "config.json")).read())
    assert cfg["model_type"] == "qwen2" and cfg["hidden_size"] == 64 and cfg["num_hidden_layers"] == 2


def test_saved_checkpoint_loads_and_has_the_trained_loss(built):
    from capojax.models import load_pretrained
    from capojax.tokenizer import load_tokenizer

    _, path = built
    model, config = load_pretrained(path)
    tok = load_tokenizer(path)
    assert config.vocab_size >= len(tok) and config.eos_token_ids == (tok.convert_tokens_to_ids(synthetic.IM_END),)
    problems = synthetic.make_problems(32, seed=77, settings=TINY.task)
    tokens, attn, lmask = sft.encode_examples(problems, tok, TINY, seq_len=96)
    loaded_loss = float(nnx.jit(sft.loss_fn)(model, jnp.asarray(tokens), jnp.asarray(attn), jnp.asarray(lmask)))
    report = json.loads(open(os.path.join(path, "sft_report.json")).read())
    # held-out loss of the reloaded weights is near the end-of-training loss, far below the untrained one
    assert loaded_loss < 0.6 * report["loss_first"], (loaded_loss, report["loss_first"])


def test_cache_is_reused_and_keyed_by_settings(built):
    cache, path = built
    mtime = os.path.getmtime(os.path.join(path, "model.safetensors"))
    assert sft.ensure_tiny_base(cache, TINY, evaluate=False) == path  # no rebuild
    assert os.path.getmtime(os.path.join(path, "model.safetensors")) == mtime
    assert sft.SFTSettings(steps=41).key() != sft.SFTSettings().key()
    with pytest.raises(ValueError, match="unknown tiny_base settings"):
        sft.SFTSettings.from_config({"hiden_size": 3})


def test_kv_cache_generation_matches_full_forward_greedy(built):
    """The evaluator's decode loop picks the same tokens as argmax over a full forward pass."""
    from capojax.models import load_pretrained
    from capojax.tokenizer import load_tokenizer

    _, path = built
    model, _ = load_pretrained(path)
    tok = load_tokenizer(path)
    from capojax.data.templates import render_prompt

    prompts = [tok(render_prompt(p.problem, tokenizer=tok), add_special_tokens=False)["input_ids"]
               for p in synthetic.make_problems(3, seed=5, settings=sft.SFTSettings(max_ops=3).task)]
    toks, mask = pad_prompts(prompts, max(len(x) for x in prompts), tok.pad_token_id)
    n = 6
    out = np.asarray(sft.generate(model, jnp.asarray(toks), jnp.asarray(mask), jax.random.key(0), jnp.float32(0.0),
                                  max_new_tokens=n))
    # one causal forward over prompt + generated tokens: the argmax at each position is the next generated token
    seq = jnp.concatenate([jnp.asarray(toks), jnp.asarray(out)], axis=1)
    m = jnp.concatenate([jnp.asarray(mask), jnp.ones(out.shape, bool)], axis=1)
    greedy = np.asarray(nnx.jit(lambda mdl, x, msk: jnp.argmax(mdl(x, attention_mask=msk), -1))(model, seq, m))
    p = toks.shape[1]
    eos = model.config.eos_token_ids
    for b in range(len(prompts)):
        for i in range(n):
            if any(t in eos for t in out[b, :i]):
                assert out[b, i] == 0  # padding after the first EOS
            else:
                assert out[b, i] == greedy[b, p - 1 + i], (b, i)


def test_confidence_targets_parse():
    from capojax.rewards import parse_confidence

    s = sft.SFTSettings(confidence=True)
    values = []
    for p in synthetic.make_problems(20, seed=0):
        text = sft.response_text(p, s)
        assert text.startswith(p.solution)
        values.append(parse_confidence(text))
    assert all(v is not None and 0.1 <= v <= 0.9 for v in values) and len(set(values)) > 3


def test_trap_slip_and_informative_confidence():
    """On trap problems a share trap_wrong_frac is solved with the fluent left-to-right slip (a wrong boxed answer,
    every line correct arithmetic), and the informative confidence is low exactly after the slip."""
    from capojax.rewards import parse_confidence
    from capojax.rewards.boxed import extract_boxed

    s = sft.SFTSettings(confidence=True, trap_wrong_frac=0.6, confidence_mode="informative")
    traps = [p for p in synthetic.make_problems(400, seed=0, settings=s.task) if synthetic.is_trap(p)]
    assert len(traps) > 40
    slipped = 0
    for p in traps:
        text = sft.response_text(p, s)
        wrong = extract_boxed(text) != str(p.answer)
        slipped += wrong
        assert (parse_confidence(text) <= 0.5) == wrong
        for line in text.splitlines()[:-2]:  # the step lines are correct arithmetic even on the slip
            a, op, b, _, r = line.split()
            assert (int(a) + int(b) if op == "+" else int(a) - int(b)) == int(r)
    assert 0.45 < slipped / len(traps) < 0.75
    plain = sft.SFTSettings(confidence=True)
    assert all(sft.response_text(p, plain).startswith(p.solution) for p in traps)


def test_phrasings_are_skewed_and_keep_the_answer():
    """Openers and step phrasings are drawn with weight 2^-i (so they spread the log-probs), never touch the answer,
    and leave the slip / confidence draws of the same problem unchanged."""
    base = sft.SFTSettings(confidence=True, trap_wrong_frac=0.6, confidence_mode="informative")
    s = sft.SFTSettings(confidence=True, trap_wrong_frac=0.6, confidence_mode="informative", openers=8,
                        step_phrasings=6)
    assert base.key() == sft.SFTSettings(confidence=True, trap_wrong_frac=0.6, confidence_mode="informative",
                                         openers=0, step_phrasings=0).key() != s.key()
    openers, prefixes = [], []
    for p in synthetic.make_problems(600, seed=1, settings=s.task):
        text, plain = sft.response_text(p, s), sft.response_text(p, base)
        assert text.splitlines()[-2:] == plain.splitlines()[-2:]  # same boxed answer and stated confidence
        opener = next(o for o in sft.OPENERS if text.startswith(o))
        openers.append(sft.OPENERS.index(opener))
        body = text[len(opener):].splitlines()[:-2]
        for line, plain_line in zip(body, plain.splitlines()[:-2]):
            prefix = line[: len(line) - len(plain_line)]
            assert line.endswith(plain_line) and prefix in sft.STEP_PREFIXES
            prefixes.append(sft.STEP_PREFIXES.index(prefix))
    counts = np.bincount(openers, minlength=8) / len(openers)
    assert counts[0] > 0.4 and counts[1] > 0.15 and counts[0] > counts[1] > counts[3] > 0
    steps = np.bincount(prefixes, minlength=6) / len(prefixes)
    assert steps[0] > 0.4 and steps[0] > steps[1] > steps[2] > 0


def test_skewed_choice_weights():
    u = (np.arange(100_000) + 0.5) / 100_000
    counts = np.bincount([sft.skewed_choice(x, 4) for x in u], minlength=4) / len(u)
    np.testing.assert_allclose(counts, 0.5 ** np.arange(4) / (0.5 ** np.arange(4)).sum(), atol=1e-3)
    assert sft.skewed_choice(0.999999, 4) == 3 and sft.skewed_choice(0.0, 4) == 0


def _scripted_accuracy(monkeypatch, accuracies):
    """measure_accuracy replaced by a script of stop-set accuracies; returns its calls as (problem ids, temperature)."""
    calls = []

    def fake(model, tokenizer, problems, settings, *, temperature, seed=0, **kw):
        calls.append((tuple(p.id for p in problems), temperature))
        return {"accuracy": accuracies[len(calls) - 1], "n": len(problems), "example": ""}

    monkeypatch.setattr(sft, "measure_accuracy", fake)
    return calls


def test_early_stop_at_the_first_check_that_reaches_the_target(tmp_path, monkeypatch):
    """Training stops right after the first check at or above stop_at_accuracy; the checks sample at T=1 a stop set
    that is neither the training stream nor the reported eval set; the saved model is the stopped one."""
    s = dataclasses.replace(TINY, steps=40, stop_at_accuracy=0.5, stop_check_every=5, stop_check_from=9,
                            stop_problems=16)
    calls = _scripted_accuracy(monkeypatch, [0.1, 0.3, 0.5, 0.9])
    report = sft.run_sft(s, str(tmp_path / "base"), evaluate=False)
    stop = report["early_stop"]
    assert stop["reached"] and stop["steps_trained"] == 20 and [c["step"] for c in stop["checks"]] == [10, 15, 20]
    assert [c["accuracy"] for c in stop["checks"]] == [0.1, 0.3, 0.5]
    assert len(calls) == 3 and all(t == 1.0 for _, t in calls) and len(set(ids for ids, _ in calls)) == 1
    stop_ids = set(calls[0][0])
    held_out = synthetic.make_problems(s.eval_problems, seed=s.task_seed + sft.EVAL_SEED_OFFSET, settings=s.task)
    train = synthetic.make_problems(20 * s.batch_size, seed=s.task_seed, settings=s.task)
    assert len(stop_ids) == 16 and not stop_ids & {p.id for p in held_out} and not stop_ids & {p.id for p in train}
    assert os.path.isfile(tmp_path / "base" / "model.safetensors")


def test_early_stop_never_reached_trains_every_step(tmp_path, monkeypatch, caplog):
    s = dataclasses.replace(TINY, steps=12, stop_at_accuracy=0.8, stop_check_every=5, stop_problems=8)
    _scripted_accuracy(monkeypatch, [0.1, 0.2])
    with caplog.at_level("WARNING"):
        report = sft.run_sft(s, str(tmp_path / "base"), evaluate=False)
    assert report["early_stop"]["steps_trained"] == 12 and not report["early_stop"]["reached"]
    assert "never reached stop-set accuracy 0.80" in caplog.text


def test_early_stop_settings_are_checked_and_keyed():
    assert sft.SFTSettings(stop_at_accuracy=0.0).key() == sft.SFTSettings().key()  # off: older bases keep their folder
    assert sft.SFTSettings(stop_at_accuracy=0.5).key() != sft.SFTSettings().key()
    # the knobs of a stop that is off change nothing, so they stay out of the key
    assert sft.SFTSettings(stop_check_from=300, stop_problems=8).key() == sft.SFTSettings().key()
    for bad in ({"stop_at_accuracy": 1.5}, {"stop_at_accuracy": -0.1}, {"stop_check_every": 0}, {"stop_problems": 0},
                {"stop_check_from": -1}):
        with pytest.raises(ValueError, match="stop_"):
            sft.SFTSettings(**bad)
