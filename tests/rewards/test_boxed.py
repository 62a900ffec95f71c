"""extract_boxed: last complete \\boxed{}, nesting, escapes, bare \\boxed, \\fbox, linear time."""
import time

import pytest

from capojax.rewards import boxed_span, extract_boxed


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"The answer is $\boxed{42}$.", "42"),
        (r"first \boxed{1} then \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{\sqrt{2}}{2}"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces do not close the box
        (r"\boxed{ \left( 3, \frac{\pi}{2} \right) }", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"so $\boxed 5$", "5"),
        (r"The answer is \boxed 25.", "25"),
        (r"\fbox{x+1}", "x+1"),
        (r"\boxed {7}", "7"),
        (r"\boxed{}", ""),
        (r"\boxed{\boxed{5}}", "5"),
        (r"\boxed{3} and then a truncated \boxed{4", "3"),  # unclosed last box: the last complete one
        (r"\boxed{3} \fbox{4}", "4"),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize("text", ["no answer here", r"\boxed{unclosed", r"\boxedx{4}", "", r"\boxed", r"{5}"])
def test_extract_boxed_absent(text):
    assert extract_boxed(text) is None


def test_boxed_span_points_into_text():
    text = r"ans: \boxed{x^{2}} end"
    s, e = boxed_span(text)
    assert text[s:e] == "x^{2}"


def test_rejects_non_string():
    with pytest.raises(TypeError, match="str"):
        extract_boxed(5)


@pytest.mark.parametrize(
    "text",
    [
        "\\boxed{" * 200_000,
        "{" * 500_000 + r"\boxed{1}" + "}" * 500_000,
        "\\" * 1_000_000,
        r"\boxed{1}" * 100_000,
    ],
)
def test_adversarial_inputs_are_linear(text):
    # A quadratic scanner takes minutes on these; a linear one well under a second each.
    t0 = time.perf_counter()
    extract_boxed(text)
    assert time.perf_counter() - t0 < 10.0


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_plain = st.text(alphabet=st.characters(blacklist_characters="{}\\$", blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=100, deadline=None)
@given(prefix=_plain, inner=_plain, suffix=_plain, nest=st.integers(0, 5))
def test_property_last_box_content_round_trips(prefix, inner, suffix, nest):
    content = "{" * nest + inner + "}" * nest
    text = prefix + r"\boxed{0} " + prefix + r"\boxed{" + content + "}" + suffix
    assert extract_boxed(text) == content.strip()
