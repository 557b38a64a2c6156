"""Tests for trainer.formula: the restricted learning-rate formula language."""

from __future__ import annotations

import ast
import io
import math
import pickle
import time
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from trainer.formula import (
    ALLOWED_FUNCTIONS,
    MAX_LENGTH,
    Formula,
    FormulaError,
    parse_formula,
)

EPOCHS = [0, 1, 2, 3, 5, 10, 37, 100]

ACCEPTED = [
    ("0.95 ** epoch", lambda n: 0.95**n),
    ("1 - epoch / 30", lambda n: 1 - n / 30),
    ("min(1, (epoch + 1) / 5) * 0.5 ** (epoch // 10)", lambda n: min(1, (n + 1) / 5) * 0.5 ** (n // 10)),
    ("0.1 if epoch < 3 else 1.0", lambda n: 0.1 if n < 3 else 1.0),
    ("exp(-0.1 * epoch)", lambda n: math.exp(-0.1 * n)),
    ("cos(pi * epoch / 20) / 2 + 0.5", lambda n: math.cos(math.pi * n / 20) / 2 + 0.5),
    ("1 < epoch <= 5", lambda n: 1.0 if 1 < n <= 5 else 0.0),
    ("epoch % 3 == 0 and 0.5 or 1", lambda n: 0.5 if n % 3 == 0 else 1.0),
    ("not epoch", lambda n: 0.0 if n else 1.0),
    ("epoch != 2 and epoch >= 1", lambda n: 1.0 if n >= 1 and n != 2 else 0.0),
    (
        "log(epoch + 1, 2) + log10(epoch + 1) + log2(epoch + 1) + log(epoch + 1)",
        lambda n: math.log(n + 1, 2) + math.log10(n + 1) + math.log2(n + 1) + math.log(n + 1),
    ),
    (
        "sqrt(epoch) + abs(-epoch) + round(epoch / 3) + floor(epoch / 3) + ceil(epoch / 3)",
        lambda n: math.sqrt(n) + n + round(n / 3) + math.floor(n / 3) + math.ceil(n / 3),
    ),
    ("max(0.1, 1 - epoch / 10, 0.05)", lambda n: max(0.1, 1 - n / 10, 0.05)),
    (
        "pow(0.9, epoch) + tanh(epoch) + sinh(0.1) + cosh(0.1) + atan(epoch) + sin(epoch) + tan(0.5)",
        lambda n: 0.9**n + math.tanh(n) + math.sinh(0.1) + math.cosh(0.1) + math.atan(n)
        + math.sin(n) + math.tan(0.5),
    ),
    ("e ** -epoch + tau - 2 * pi", lambda n: math.e**-n + math.tau - 2 * math.pi),
    ("+epoch - -1", lambda n: n + 1),
    ("  0.5  ", lambda n: 0.5),
    ("(((epoch)))", lambda n: n),
    ("1_000 * 1e-3", lambda n: 1.0),
]

REFUSED = [
    ("__import__('os').system('id')", "__import__"),
    ("().__class__", "__class__"),
    ("epoch.real", ".real"),
    ("[1][0]", "indexing"),
    ('"a"', 'the text `"a"`'),
    ("b'a'", "bytes"),
    ("lambda: 1", "lambda"),
    ("open('x')", "open"),
    ("f(x=1)", "x=1"),
    ("min(1, epoch, key=abs)", "key=abs"),
    ("min(*[1, 2])", "*"),
    ("min(1, **{})", "**"),
    ("epoch if 1 else __builtins__", "__builtins__"),
    ("x", "`x`"),
    ("getattr(epoch, 'x')", "getattr"),
    ("(lambda: 0)()", "lambda"),
    ("(y := 1)", ":="),
    ("[i for i in range(3)]", "comprehension"),
    ("sum(i for i in [1])", "generator"),
    ("f'{epoch}'", "f-string"),
    ("True", "True"),
    ("None", "None"),
    ("...", "..."),
    ("1j", "complex"),
    ("~epoch", "~"),
    ("epoch & 1", "&"),
    ("epoch << 2", "<<"),
    ("epoch is 1", "is"),
    ("epoch in (1, 2)", "in"),
    ("{1: 2}", "dict"),
    ("math.exp(epoch)", "math"),
    ("print", "print"),
    ("epoch()", "epoch"),
    ("pi(1)", "pi"),
    ("(epoch)(1)", "epoch"),
    ("1(2)", "calling `1`"),
    ("min", "min"),
    ("min(1)", "at least 2"),
    ("abs(1, 2)", "takes 1 argument"),
    ("log()", "takes 1 or 2 arguments"),
    ("pow(2)", "takes 2 arguments"),
    ("1e400", "1e400"),
    ("9" * 400, "too large"),
]


def timed(action):
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


@pytest.mark.parametrize(("text", "expected"), ACCEPTED)
def test_accepted_formula_evaluates_like_the_python_expression(text, expected):
    formula = Formula(text)
    for epoch in EPOCHS:
        value = formula(epoch)
        assert type(value) is float
        assert value == pytest.approx(expected(epoch), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(("text", "_expected"), ACCEPTED)
def test_python_source_with_math_imports_gives_the_same_values(text, _expected):
    formula = Formula(text)
    names = formula.names_used()
    namespace: dict = {}
    if names:
        exec(f"from math import {', '.join(names)}", namespace)
    for epoch in EPOCHS:
        expected = eval(formula.python_source(), {**namespace, "epoch": epoch})
        assert formula(epoch) == pytest.approx(float(expected), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(("text", "mention"), REFUSED)
def test_forbidden_construct_is_refused_naming_it(text, mention):
    with pytest.raises(FormulaError) as caught:
        Formula(text)
    assert mention in str(caught.value)


def test_refusal_lists_what_is_allowed():
    with pytest.raises(FormulaError) as caught:
        Formula("__import__('os').system('id')")
    message = str(caught.value)
    assert message.startswith("`__import__`")
    assert "not allowed" in message
    assert "epoch" in message and "x if cond else y" in message
    for name in ALLOWED_FUNCTIONS:
        assert name in message


def test_formula_error_is_a_value_error():
    assert issubclass(FormulaError, ValueError)


def test_parse_formula_returns_a_compiled_formula():
    formula = parse_formula("0.5 * epoch")
    assert isinstance(formula, Formula)
    assert formula.text == "0.5 * epoch"
    assert formula(4) == 2.0


def test_text_is_stripped_and_kept():
    assert Formula("  1 - epoch / 30\n").text == "1 - epoch / 30"


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty_formula_is_refused(text):
    with pytest.raises(FormulaError, match="empty"):
        Formula(text)


@pytest.mark.parametrize("value", [None, 0.5, b"epoch", ["epoch"]])
def test_non_text_formula_is_refused(value):
    with pytest.raises(FormulaError, match="must be text"):
        Formula(value)


@pytest.mark.parametrize("text", ["1 +", "epoch epoch", "min(1, 2", "1 = 2", "if epoch: 1", "a\x00"])
def test_syntax_error_says_it_could_not_parse(text):
    with pytest.raises(FormulaError, match="could not parse"):
        Formula(text)


def test_syntax_error_gives_the_position():
    with pytest.raises(FormulaError, match="at character 7"):
        Formula("epoch epoch")


@pytest.mark.parametrize(
    ("text", "epoch"),
    [("9 ** 9 ** 9", 0), ("10 ** 10 ** 10", 0), ("2 ** epoch", 10**6), ("epoch ** epoch ** epoch", 10)],
)
def test_huge_power_fails_fast_with_formula_error(text, epoch):
    def evaluate():
        with pytest.raises(FormulaError, match=f"too large at epoch {epoch}"):
            Formula(text)(epoch)

    assert timed(evaluate) < 0.5


def test_exp_overflow_is_a_formula_error():
    with pytest.raises(FormulaError, match="epoch 1000"):
        Formula("exp(epoch)")(1000)


def test_huge_epoch_is_a_formula_error():
    with pytest.raises(FormulaError, match="too large"):
        Formula("epoch")(10**400)


@pytest.mark.parametrize(
    ("text", "bad_epoch"),
    [("1 / (epoch - 3)", 3), ("epoch // (epoch - 2)", 2), ("epoch % (5 - epoch)", 5), ("log(10, epoch)", 1)],
)
def test_division_by_zero_names_the_epoch(text, bad_epoch):
    formula = Formula(text)
    formula(bad_epoch + 1)
    with pytest.raises(FormulaError, match=f"division by zero at epoch {bad_epoch}$"):
        formula(bad_epoch)


@pytest.mark.parametrize(
    ("text", "bad_epoch"),
    [("log(epoch)", 0), ("sqrt(2 - epoch)", 3), ("(epoch - 1) ** 0.5", 0), ("0 ** -epoch", 1)],
)
def test_math_domain_error_names_the_epoch(text, bad_epoch):
    with pytest.raises(FormulaError, match=f"math domain error at epoch {bad_epoch}"):
        Formula(text)(bad_epoch)


@pytest.mark.parametrize(
    ("text", "shown"),
    [("exp(400) * exp(epoch)", "inf"), ("exp(400) * exp(400) - exp(400) * exp(epoch)", "nan")],
)
def test_non_finite_result_is_refused(text, shown):
    with pytest.raises(FormulaError, match=f"gives {shown} at epoch 400, not a finite number"):
        Formula(text)(400)


def test_non_number_epoch_is_a_type_error():
    with pytest.raises(TypeError):
        Formula("epoch")("3")


def test_lambda_as_the_tutorials_write_it_is_its_body():
    formula = Formula("lambda epoch: 0.95 ** epoch")
    assert [formula(n) for n in EPOCHS] == [0.95**n for n in EPOCHS]
    assert formula.python_source() == "0.95 ** epoch" and formula.text == "lambda epoch: 0.95 ** epoch"


@pytest.mark.parametrize("text", ["lambda e: 0.95 ** e", "lambda: 0.95", "lambda epoch, step: 1", "lambda epoch=1: epoch"])
def test_another_lambda_is_refused_saying_exactly_what_to_type(text):
    with pytest.raises(FormulaError) as caught:
        Formula(text)
    assert str(caught.value) == (
        "a lambda here takes one argument named epoch, as in `lambda epoch: 0.95 ** epoch`; "
        "or type only the expression, `0.95 ** epoch`"
    )


def test_fractional_epoch_is_named_without_exponent_notation():
    with pytest.raises(FormulaError, match=r"division by zero at epoch 2.5$"):
        Formula("1 / (epoch - 2.5)")(2.5)
    with pytest.raises(FormulaError, match=r"division by zero at epoch 1000000$"):
        Formula("1 / (epoch - 1000000)")(1_000_000)


def test_float_epoch_is_accepted():
    assert Formula("epoch * 2")(1.25) == 2.5


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("(" * 10000, "too long"),
        ("epoch + " * 100 + "1", "too long"),
        ("[" * 250, "could not parse"),
        ("-" * 450 + "epoch", "nested too deeply"),
        ("abs(" * 99 + "epoch" + ")" * 99, "nested too deeply"),
        ("not " * 120 + "epoch", "nested too deeply"),
        ("min(" + ",".join(["1"] * 240) + ")", "at most 200 parts"),
    ],
)
def test_oversized_or_deeply_nested_text_is_refused_quickly(text, match):
    def build():
        with pytest.raises(FormulaError, match=match):
            Formula(text)

    assert timed(build) < 0.5


def test_text_of_the_maximum_length_is_accepted():
    text = "(" * 100 + "epoch" + ")" * 100
    text += " " * (MAX_LENGTH - len(text))
    assert Formula(text)(7) == 7.0


def test_names_used_lists_math_names_only():
    assert Formula("exp(-epoch) * pi + min(1, e) + round(abs(epoch))").names_used() == ["e", "exp", "pi"]
    assert Formula("pow(0.5, epoch) + log(epoch + 1) + tau").names_used() == ["log", "pow", "tau"]
    assert Formula("max(0.1, 1 - epoch / 10)").names_used() == []


def test_python_source_is_normalised_python():
    formula = Formula("min(1,(epoch+1)/5)*0.5**(epoch//10)")
    assert formula.python_source() == "min(1, (epoch + 1) / 5) * 0.5 ** (epoch // 10)"
    assert Formula("0.1 if epoch<3 else 1").python_source() == "0.1 if epoch < 3 else 1"


def test_formula_survives_pickling():
    formula = Formula("0.5 ** (epoch // 10)")
    copy = pickle.loads(pickle.dumps(formula))
    assert copy.text == formula.text
    assert [copy(n) for n in EPOCHS] == [formula(n) for n in EPOCHS]


def test_formula_works_as_lambda_lr_lr_lambda_and_its_state_dict_saves():
    torch = pytest.importorskip("torch")

    def scheduler():
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=Formula("0.5 ** epoch"))

    optimizer, first = scheduler()
    rates = []
    for _ in range(3):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        first.step()
    assert rates == pytest.approx([0.1, 0.05, 0.025])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    optimizer, second = scheduler()
    second.load_state_dict(torch.load(buffer, weights_only=True))
    second.step()
    assert second.get_last_lr() == pytest.approx([0.1 * 0.5**4])


def test_ten_thousand_evaluations_take_well_under_a_tenth_of_a_second():
    formula = Formula("min(1, (epoch + 1) / 5) * 0.5 ** (epoch // 10)")

    def run():
        for epoch in range(10_000):
            formula(epoch)

    # Best of three, so a busy shared machine does not make the test flaky.
    assert min(timed(run) for _ in range(3)) < 0.1


# --- property tests -------------------------------------------------------------------------

LEAVES = st.one_of(
    st.just("epoch"),
    st.sampled_from(["pi", "e", "tau"]),
    st.integers(0, 20).map(str),
    st.floats(0, 100, allow_nan=False).map(repr),
)
FUNCTION_ARITIES = {"min": (2, 3), "max": (2, 3), "log": (1, 2), "pow": (2, 2)}


def _extend(children):
    def call(name):
        low, high = FUNCTION_ARITIES.get(name, (1, 1))
        return st.lists(children, min_size=low, max_size=high).map(lambda a: f"{name}({', '.join(a)})")

    return st.one_of(
        st.tuples(children, st.sampled_from(["+", "-", "*", "/", "//", "%", "**"]), children).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        st.tuples(st.sampled_from(["-", "+", "not "]), children).map(lambda t: f"({t[0]}{t[1]})"),
        st.tuples(children, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), children, children).map(
            lambda t: f"({t[0]} {t[1]} {t[2]} < {t[3]})"
        ),
        st.tuples(children, st.sampled_from(["and", "or"]), children).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        st.tuples(children, children, children).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})"),
        st.sampled_from(sorted(ALLOWED_FUNCTIONS)).flatmap(call),
    )


EXPRESSIONS = st.recursive(LEAVES, _extend, max_leaves=12)


class _IntsToFloats(ast.NodeTransformer):
    """The oracle computes in floats like Formula does, so `9 ** 9 ** 9` cannot hang it."""

    def visit_Constant(self, node):
        return ast.Constant(float(node.value)) if type(node.value) is int else node


def _oracle(formula: Formula, epoch: float) -> float:
    tree = ast.fix_missing_locations(_IntsToFloats().visit(ast.parse(formula.python_source(), mode="eval")))
    namespace = {name: getattr(math, name) for name in formula.names_used()}
    # Formula's round/floor/ceil return floats so no huge int can grow; the oracle matches that.
    namespace.update(round=lambda x: float(round(x)), floor=lambda x: float(math.floor(x)))
    namespace.update(ceil=lambda x: float(math.ceil(x)), epoch=epoch)
    return float(eval(compile(tree, "<oracle>", "eval"), namespace))


@settings(max_examples=400, deadline=timedelta(milliseconds=500))
@given(st.text(max_size=80))
def test_random_text_only_ever_raises_formula_error(text):
    _evaluate_everywhere_or_refuse(text)


@settings(max_examples=300, deadline=timedelta(milliseconds=500))
@given(st.text(alphabet="epoch0123456789.+-*/%()<>=!, _aeilnmorstxfdg'[]:", max_size=60))
def test_formula_like_text_only_ever_raises_formula_error(text):
    _evaluate_everywhere_or_refuse(text)


def _evaluate_everywhere_or_refuse(text):
    try:
        formula = Formula(text)
    except FormulaError:
        return
    for epoch in (0, 1, 7, 10**6):
        try:
            value = formula(epoch)
        except FormulaError:
            continue
        assert type(value) is float and math.isfinite(value)


@settings(
    max_examples=400, deadline=timedelta(milliseconds=500), suppress_health_check=[HealthCheck.too_slow]
)
@given(EXPRESSIONS, st.sampled_from([0, 1, 3, 10, 250]))
def test_well_formed_expression_gives_a_finite_float_or_formula_error(text, epoch):
    formula = Formula(text)
    try:
        value = formula(epoch)
    except FormulaError as error:
        assert f"epoch {epoch}" in str(error)
        return
    assert type(value) is float and math.isfinite(value)
    assert value == _oracle(formula, float(epoch))


FORBIDDEN = [
    ("__import__('os').system('id')", "__import__"),
    ("open('x').read()", "open"),
    ("epoch.real", ".real"),
    ("(1).__class__", ".__class__"),
    ("epoch.__class__.__mro__", ".__mro__"),
    ("globals()", "globals"),
    ("getattr(epoch, 'x')", "getattr"),
    ("os", "`os`"),
    ("__builtins__", "__builtins__"),
    ("self", "`self`"),
    ("[epoch][0]", "indexing"),
    ("'text'", "'text'"),
    ("(lambda: 1)()", "lambda"),
    ("(z := epoch)", ":="),
    ("[i for i in (1,)]", "comprehension"),
    ("exp(epoch).hex()", ".hex"),
]


@settings(max_examples=300, deadline=timedelta(milliseconds=500))
@given(
    st.recursive(LEAVES, _extend, max_leaves=5),
    st.sampled_from(FORBIDDEN),
    st.sampled_from(
        ["({e}) + ({b})", "({b}) * ({e})", "min({e}, {b})", "{e} if {b} else 1", "1 if {e} else {b}"]
    ),
)
def test_expression_with_a_forbidden_part_is_refused_naming_it(expression, forbidden, template):
    bad, mention = forbidden
    text = template.format(e=expression, b=bad)
    assume(len(text) <= MAX_LENGTH)
    with pytest.raises(FormulaError) as caught:
        Formula(text)
    assert mention in str(caught.value)
