"""grade / grade_batch / answers_equivalent: benchmark quirks, bad input, deadlines, a pool that survives
hung and crashed workers."""
import logging
import os
import signal
import threading
import time

import pytest

from capojax.rewards import (
    GradeResult,
    answers_equivalent,
    equivalence_classes,
    grade,
    grade_batch,
    grade_detailed,
    normalize_gold,
)
from capojax.rewards.grading import deadline
from capojax.rewards.pool import GraderPool

B = r"So the answer is $\boxed{%s}$."

CORRECT = [
    (B % "25", "025"),  # AIME24 zero padding
    (B % "025", 25),
    (B % "70", 70),  # AIME25 ints
    (B % "27", 27.0),  # AMC floats
    (B % "27", "27.0"),
    (B % "9.6", ["9.6\n"]),  # Minerva: list with trailing newline
    (B % "0.02", ["0.01\n", "0.02\n"]),  # Minerva: any of several acceptable answers
    (B % "7.5 \\times 10^{7}", ["7.5 \\times 10^7", "7.5 \\times 10^7\n"]),
    (B % r"\frac{1}{2n+2}", [r"$\frac{1}{2 n+2}$"]),  # OlympiadBench $...$
    (B % "84, 69", ["$69$,$84$"]),  # OlympiadBench multi-answer, any order
    (B % "0.5", r"$\frac12$"),  # fraction vs decimal
    (B % r"\frac{3}{4}", "0.75"),
    (B % "3", "x = 3"),  # assignment vs value, both ways
    (B % "x = 3", "3"),
    (B % r"\left( 3, \frac{\pi}{2} \right)", r"\left( 3, \frac{\pi}{2} \right)"),
    (B % r"\text{Evelyn}", r"\text{Evelyn}"),
    (B % r"\frac{270}{7}", r"\frac{270}7\text{ degrees}"),
    (B % r"2\sqrt{2}", r"\sqrt{8}"),
    (r"\fbox{12}", 12),
    (r"the answer is \boxed 12.", 12),
    ("Thus the final answer is $5$.", 5),  # no box: math-verify fallback on the tail
    (B % "5" + "\nCONFIDENCE: 0.9", 5),  # DCPO line is not the answer
    (B % "5", r"\boxed{5}"),  # a boxed gold is unwrapped
]

WRONG = [
    (B % "26", "025"),
    (B % "27.5", 27.0),
    (B % "0.03", ["0.01\n", "0.02\n"]),
    (B % r"\frac{1}{3}", "0.5"),
    (B % "x = 4", "3"),
    (B % "69", ["$69$,$84$"]),
    (B % r"\text{Navin}", r"\text{Evelyn}"),
    ("I am not sure.", 5),
    ("no box\nCONFIDENCE: 0.9", "0.9"),  # the confidence number must not be read as the answer
    (r"\boxed{}", 5),
    (B % "5" + r" \boxed{6}", 5),  # the last box counts
]


@pytest.mark.parametrize("response, gold", CORRECT)
def test_correct(response, gold):
    assert grade(response, gold) is True


@pytest.mark.parametrize("response, gold", WRONG)
def test_wrong(response, gold):
    assert grade(response, gold) is False


def test_grade_detailed_reports_extraction():
    assert grade_detailed(B % r"\frac{1}{2}", "0.5") == (True, r"\frac{1}{2}", False)
    assert grade_detailed("nothing here", 1) == (False, None, False)


def test_require_boxed_disables_fallback():
    assert grade("Thus the final answer is $5$.", 5, require_boxed=True) is False
    assert grade(B % "5", 5, require_boxed=True) is True


def test_normalize_gold():
    assert normalize_gold(27.0) == ("27",)
    assert normalize_gold(0.5) == ("0.5",)
    assert normalize_gold(["9.6\n", "$9.60$"]) == ("9.6", "9.60")
    assert normalize_gold(r"$\$5$") == (r"\$5",)  # escaped dollars stay


@pytest.mark.parametrize("gold", ["", "  \n", [], None, float("nan"), True, ["", "$$"], {"a": 1}])
def test_bad_gold_is_a_clear_error(gold):
    with pytest.raises(ValueError, match="gold"):
        grade(B % "1", gold)


def test_bad_response_type():
    with pytest.raises(TypeError, match="str"):
        grade(5, 5)


ADVERSARIAL = {
    "deep_braces": r"\boxed{" + "{" * 300 + "1" + "}" * 300 + "}",
    "huge_nested_braces": r"\boxed{" + "{" * 100_000 + "1" + "}" * 100_000 + "}",
    "million_digits": r"\boxed{" + "7" * 1_000_000 + "}",
    "million_digits_unboxed": "7" * 1_000_000,
    "power_tower": r"\boxed{10^{10^{10}}}",
    "factorial": r"\boxed{(10^{10})!}",
    "integral": r"\boxed{\int_0^{\infty} e^{-x^{100}} \sin(x^{50}) dx}",
    "unclosed": r"\boxed{" * 100_000,
    "binary": bytes(range(256)).decode("latin1") * 200,
    "many_boxes": r"\boxed{1}" * 100_000,
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_in_process_returns_false(name, caplog):
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="capojax.rewards"):
        correct, _, timed_out = grade_detailed(ADVERSARIAL[name], "5", timeout=1.0)
    assert correct is False
    # bounded by the 1 s deadline plus linear-time pre-processing; generous for a loaded 2-core machine
    assert time.perf_counter() - t0 < 20.0
    if timed_out:
        assert any("timed out" in r.message for r in caplog.records)
        assert all(len(r.getMessage()) < 1000 for r in caplog.records)  # never logs the whole input
    # the grader still works after a timeout (no half-broken parser state)
    assert grade(B % "5", 5) is True


def test_timeout_is_counted_and_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="capojax.rewards"):
        correct, extracted, timed_out = grade_detailed(ADVERSARIAL["power_tower"], "5", timeout=0.5)
    assert (correct, timed_out) == (False, True)
    assert extracted == "10^{10^{10}}"
    assert any("timed out" in r.message for r in caplog.records)


def test_deadline_preserves_an_outer_timer():
    fired = []
    old = signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 50.0)
        assert grade(B % "5", 5) is True
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0 < remaining <= 50.0  # re-armed, not cancelled
        assert signal.getsignal(signal.SIGALRM) is not None and not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_deadline_rejects_bad_timeout():
    with pytest.raises(ValueError, match="timeout"):
        with deadline(0):
            pass


def test_answers_equivalent():
    assert answers_equivalent("x=3", "3") and answers_equivalent("3", "x = 3")
    assert answers_equivalent(r"\frac12", "0.5")
    assert answers_equivalent("1,2", "2, 1")
    assert not answers_equivalent("2", "3")
    assert not answers_equivalent("", "")
    assert not answers_equivalent(None, "1")
    assert not answers_equivalent("7" * 5000, "7" * 5000 + "1")


def test_equivalence_classes():
    answers = ["1/2", "0.5", "3", r"\frac{1}{2}", None, "x=3", "1/2", None]
    assert equivalence_classes(answers) == [0, 0, 2, 0, 4, 2, 0, 7]


# ------------------------------------------------------------------------------------- batch / pool


def test_grade_batch_matches_in_process():
    responses = [r for r, _ in CORRECT + WRONG]
    golds = [g for _, g in CORRECT + WRONG]
    expected = [True] * len(CORRECT) + [False] * len(WRONG)
    parallel = grade_batch(responses, golds, timeout=5.0, workers=2)
    serial = grade_batch(responses, golds, timeout=5.0, workers=0)
    assert isinstance(parallel, GradeResult)
    assert parallel.correct == expected == serial.correct
    assert parallel.extracted == serial.extracted
    assert parallel.timeouts == serial.timeouts == 0
    assert parallel.timed_out == serial.timed_out == [False] * len(expected)
    assert parallel.crashes == 0


def test_grade_batch_counts_timeouts():
    # power towers and huge factorials take sympy far longer than 0.5 s; the others are instant
    responses = [ADVERSARIAL["power_tower"], B % "5", ADVERSARIAL["factorial"], "I am not sure."]
    res = grade_batch(responses, [5] * 4, timeout=0.5, workers=2)
    assert res.correct == [False, True, False, False]
    assert res.timeouts == 2 and res.timed_out == [True, False, True, False]
    assert res.extracted == ["10^{10^{10}}", "5", "(10^{10})!", None]


def test_grade_batch_validates_input():
    with pytest.raises(ValueError, match="2 responses but 1 golds"):
        grade_batch(["a", "b"], [1], workers=0)
    with pytest.raises(ValueError, match=r"golds\[1\]"):
        grade_batch(["a", "b"], [1, ""], workers=0)


def test_grade_off_main_thread_uses_workers():
    # signals (deadlines) need the main thread, so grade() from another thread goes to the worker pool
    out = {}

    def run():
        out["c"] = grade(B % "25", "025", timeout=5)
        out["w"] = grade(B % "26", "025", timeout=5)
        out["eq"] = answers_equivalent("0.5", r"\frac{1}{2}")

    th = threading.Thread(target=run)
    th.start()
    th.join()
    assert out == {"c": True, "w": False, "eq": True}


@pytest.fixture(scope="module")
def pool():
    with GraderPool(1) as p:
        yield p


def test_pool_replaces_a_hung_worker(pool):
    golds = [normalize_gold(5)] * 2
    assert pool.grade([B % "5"], golds[:1], timeout=1.0).correct == [True]
    (pid,) = pool.pids()
    os.kill(pid, signal.SIGSTOP)  # frozen: the soft deadline cannot fire, only the hard kill helps
    res = pool.grade([B % "5", B % "5"], golds, timeout=0.5)
    assert res.correct == [False, True] and res.timeouts == 1 and res.timed_out == [True, False]
    assert pool.pids() != [pid]
    assert pool.grade([B % "5"], golds[:1], timeout=1.0).correct == [True]


def test_pool_replaces_a_crashed_worker(pool):
    golds = [normalize_gold(5)] * 2
    (pid,) = pool.pids()
    pool.grade([B % "5"], golds[:1], timeout=1.0)  # make sure the worker is up
    os.kill(pid, signal.SIGSTOP)
    out = {}
    th = threading.Thread(target=lambda: out.update(r=pool.grade([B % "5", B % "5"], golds, timeout=60.0)))
    th.start()
    time.sleep(1.0)  # the first task is now in flight on the frozen worker
    os.kill(pid, signal.SIGKILL)
    th.join()
    assert out["r"].correct == [False, True] and out["r"].crashes == 1 and out["r"].timeouts == 0
    assert pool.grade([B % "5"], golds[:1], timeout=1.0).correct == [True]


def test_pool_equivalent(pool):
    assert pool.equivalent([("x=3", "3"), ("1", "2")], timeout=5.0) == [True, False]


def test_cold_start_is_not_charged_to_the_first_deadline():
    # A fresh process pays seconds of math-verify/sympy import and parser construction before its first
    # grade; that happens outside the deadline, so even a short timeout grades the first answer correctly.
    import subprocess
    import sys

    code = "from capojax.rewards import grade_detailed; print(grade_detailed('$\\\\boxed{25}$', '025', timeout=0.5))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "(True, '25', False)"


def test_pool_workers_ignore_ctrl_c_and_sigterm(pool):
    # Ctrl-C reaches the whole process group: the trainer finishes its step (grading included) before stopping.
    golds = [normalize_gold(5)]
    assert pool.grade([B % "5"], golds, timeout=5.0).correct == [True]  # the worker is up and has its handlers
    (pid,) = pool.pids()
    os.kill(pid, signal.SIGINT)
    os.kill(pid, signal.SIGTERM)
    res = pool.grade([B % "5"], golds, timeout=5.0)
    assert res.correct == [True] and res.crashes == 0 and pool.pids() == [pid]
