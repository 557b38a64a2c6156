"""Safe learning-rate formulas typed by users, such as `0.95 ** epoch`.

This module owns the small formula language used for the `lr_lambda` of LambdaLR and
MultiplicativeLR: what it allows, how a formula is checked, how it is evaluated, and how it is
written back as Python for code snippets. User text is parsed with `ast` and run by a tree of
closures built here; it is never passed to `eval`, `exec` or `compile`. The tutorials' form
`lambda epoch: 0.95 ** epoch` is accepted and means its body, `0.95 ** epoch`.
"""

from __future__ import annotations

import ast
import math
import numbers
import operator
import warnings
from collections.abc import Callable

MAX_LENGTH = 500
MAX_NODES = 200
MAX_DEPTH = 50

CONSTANTS: dict[str, float] = {"e": math.e, "pi": math.pi, "tau": math.tau}


def _round(x: float) -> float:
    return float(round(x))


def _floor(x: float) -> float:
    return float(math.floor(x))


def _ceil(x: float) -> float:
    return float(math.ceil(x))


# name -> (function, fewest arguments, most arguments or None for no limit). round, floor and
# ceil return floats so that every value inside a formula is a float and no huge int can grow.
_FUNCTIONS: dict[str, tuple[Callable[..., float], int, int | None]] = {
    "abs": (abs, 1, 1),
    "atan": (math.atan, 1, 1),
    "ceil": (_ceil, 1, 1),
    "cos": (math.cos, 1, 1),
    "cosh": (math.cosh, 1, 1),
    "exp": (math.exp, 1, 1),
    "floor": (_floor, 1, 1),
    "log": (math.log, 1, 2),
    "log10": (math.log10, 1, 1),
    "log2": (math.log2, 1, 1),
    "max": (max, 2, None),
    "min": (min, 2, None),
    "pow": (math.pow, 2, 2),
    "round": (_round, 1, 1),
    "sin": (math.sin, 1, 1),
    "sinh": (math.sinh, 1, 1),
    "sqrt": (math.sqrt, 1, 1),
    "tan": (math.tan, 1, 1),
    "tanh": (math.tanh, 1, 1),
}
ALLOWED_FUNCTIONS: dict[str, Callable[..., float]] = {n: f for n, (f, _, _) in _FUNCTIONS.items()}
# Python builtins need no import in generated code; every other function comes from math.
_BUILTIN_FUNCTIONS = frozenset({"abs", "max", "min", "round"})

HELP = (
    "formulas may use epoch, numbers, the constants "
    + ", ".join(sorted(CONSTANTS))
    + ", + - * / // % **, comparisons (< <= > >= == !=), and, or, not, `x if cond else y`, "
    + "and the functions "
    + ", ".join(sorted(ALLOWED_FUNCTIONS))
)

_BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    # math.pow works in floats: it fails fast on overflow instead of building a huge int, and
    # refuses a negative base with a fractional exponent instead of returning a complex number.
    ast.Pow: math.pow,
}
_COMPARE: dict[type, Callable[[float, float], bool]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_ALLOWED_NODES = (
    frozenset(_BINARY)
    | frozenset(_COMPARE)
    | {ast.Expression, ast.Load, ast.UnaryOp, ast.UAdd, ast.USub, ast.Not, ast.BinOp}
    | {ast.BoolOp, ast.And, ast.Or, ast.Compare, ast.IfExp, ast.Call}
)
# Parts of constructs that are refused anyway: naming them too would only add noise.
_SILENT_NODES = (
    ast.Store, ast.Del, ast.comprehension, ast.arguments, ast.arg, ast.FormattedValue, ast.Slice,
)
_WORDS: dict[type, str] = {
    ast.BitAnd: "`&`",
    ast.BitOr: "`|`",
    ast.BitXor: "`^`",
    ast.LShift: "`<<`",
    ast.RShift: "`>>`",
    ast.MatMult: "`@`",
    ast.Invert: "`~`",
    ast.Is: "`is`",
    ast.IsNot: "`is not`",
    ast.In: "`in`",
    ast.NotIn: "`not in`",
}
_WORDS_WITH_SOURCE: dict[type, str] = {
    ast.Subscript: "indexing",
    ast.Lambda: "the lambda",
    ast.NamedExpr: "the assignment",
    ast.ListComp: "the list comprehension",
    ast.SetComp: "the set comprehension",
    ast.DictComp: "the dict comprehension",
    ast.GeneratorExp: "the generator expression",
    ast.List: "the list",
    ast.Tuple: "the tuple",
    ast.Set: "the set",
    ast.Dict: "the dict",
    ast.JoinedStr: "the f-string",
    ast.Starred: "`*` unpacking",
    ast.Await: "`await`",
    ast.Yield: "`yield`",
    ast.YieldFrom: "`yield from`",
}


class FormulaError(ValueError):
    """A formula is refused or cannot be evaluated; the message says why in plain words."""


def _source(node: ast.AST, text: str = "") -> str:
    """A short quote of `node`: as the user typed it when `text` is given, else regenerated."""
    quote = (ast.get_source_segment(text, node) if text else None) or ast.unparse(node)
    return quote if len(quote) <= 40 else quote[:37] + "..."


def _not_allowed(what: list[str] | str) -> FormulaError:
    items = [what] if isinstance(what, str) else what
    listed = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    verb = "is" if len(items) == 1 else "are"
    return FormulaError(f"{listed} {verb} not allowed: {HELP}")


def _problem(node: ast.AST, text: str) -> str | None:
    """Describe why `node` of the formula `text` is refused, or None when it is allowed."""
    kind = type(node)
    if kind is ast.Name:
        allowed = node.id == "epoch" or node.id in CONSTANTS or node.id in ALLOWED_FUNCTIONS
        return None if allowed or not isinstance(node.ctx, ast.Load) else f"`{node.id}`"
    if kind is ast.Constant:
        value, quote = node.value, _source(node, text)
        if type(value) in (int, float):  # exact types: True and False are ints too
            return None if _as_float(value) is not None else f"the number `{quote}` (too large)"
        if isinstance(value, str):
            return f"the text `{quote}`"
        if isinstance(value, bytes):
            return f"the bytes `{quote}`"
        if isinstance(value, complex):
            return f"the complex number `{quote}`"
        return f"`{quote}`"
    if kind in _ALLOWED_NODES or isinstance(node, _SILENT_NODES):
        return None
    if kind is ast.Attribute:
        return f"attribute access `.{node.attr}`"
    if kind is ast.keyword:
        quote = _source(node, text)
        return "`**` unpacking" if node.arg is None else f"the keyword argument `{quote}`"
    if kind in _WORDS:
        return _WORDS[kind]
    if kind in _WORDS_WITH_SOURCE:
        return f"{_WORDS_WITH_SOURCE[kind]} `{_source(node, text)}`"
    return f"`{_source(node, text)}`" if hasattr(node, "col_offset") else f"`{kind.__name__}`"


def _check(tree: ast.Expression, text: str) -> int:
    """Refuse trees that are too big or too deep, or that use anything outside the language.

    Returns the number of parts (expression nodes): what one evaluation costs. Iterative, so a
    hostile tree cannot exhaust the stack here; the depth limit then keeps the recursive compiler
    and the closures it builds shallow.
    """
    problems: list[tuple[tuple[int, int, int, int], str]] = []
    count = 0
    stack: list[tuple[ast.AST, int, tuple[int, int, int, int]]] = [(tree, 0, (0, 0, 0, 0))]
    while stack:
        node, depth, position = stack.pop()
        if isinstance(node, ast.expr):
            count += 1
            if count > MAX_NODES:
                raise FormulaError(f"the formula is too long: at most {MAX_NODES} parts")
            if depth > MAX_DEPTH:
                raise FormulaError(f"the formula is nested too deeply: at most {MAX_DEPTH} levels")
        if hasattr(node, "col_offset"):
            position = (node.lineno, node.col_offset, node.end_lineno, node.end_col_offset)
        problem = _problem(node, text)
        if problem is not None:
            problems.append((position, problem))
        stack.extend((child, depth + 1, position) for child in ast.iter_child_nodes(node))
    if problems:
        # Reading order, so the message lists problems the way the user wrote them.
        described = list(dict.fromkeys(problem for _, problem in sorted(problems)))
        raise _not_allowed(described[:3] + (["more"] if len(described) > 3 else []))
    return count


def _lambda_body(tree: ast.Expression) -> ast.Expression:
    """`lambda epoch: 0.95 ** epoch`, as tutorials write an lr_lambda, is the formula `0.95 ** epoch`."""
    node = tree.body
    if not isinstance(node, ast.Lambda):
        return tree
    args = node.args
    plain = not (args.posonlyargs or args.kwonlyargs or args.vararg or args.kwarg or args.defaults)
    if not (plain and [a.arg for a in args.args] == ["epoch"]):
        raise FormulaError(
            "a lambda here takes one argument named epoch, as in `lambda epoch: 0.95 ** epoch`; "
            "or type only the expression, `0.95 ** epoch`"
        )
    return ast.Expression(body=node.body)


def _as_float(number: float) -> float | None:
    """`number` as a finite float, or None when it is too large for one."""
    try:
        value = float(number)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def _epoch(x: float) -> float:
    return x


def _constant(value: float) -> Callable[[float], float]:
    return lambda x: value


def _compile(node: ast.AST) -> Callable[[float], float]:
    """Turn a checked expression node into a function of the epoch (a float)."""
    if isinstance(node, ast.Constant):
        return _constant(_as_float(node.value))
    if isinstance(node, ast.Name):
        if node.id == "epoch":
            return _epoch
        if node.id in CONSTANTS:
            return _constant(CONSTANTS[node.id])
        raise FormulaError(f"`{node.id}` is a function: call it with arguments, like {node.id}(...)")
    if isinstance(node, ast.UnaryOp):
        operand = _compile(node.operand)
        if isinstance(node.op, ast.USub):
            return lambda x: -operand(x)
        if isinstance(node.op, ast.UAdd):
            return operand
        return lambda x: 0.0 if operand(x) else 1.0
    if isinstance(node, ast.BinOp):
        op, left, right = _BINARY[type(node.op)], _compile(node.left), _compile(node.right)
        return lambda x: op(left(x), right(x))
    if isinstance(node, ast.BoolOp):
        return _compile_bool(isinstance(node.op, ast.And), [_compile(v) for v in node.values])
    if isinstance(node, ast.Compare):
        return _compile_compare(node)
    if isinstance(node, ast.IfExp):
        test, body, orelse = _compile(node.test), _compile(node.body), _compile(node.orelse)
        return lambda x: body(x) if test(x) else orelse(x)
    return _compile_call(node)  # the only node type _check lets through that is left


def _compile_bool(is_and: bool, values: list[Callable[[float], float]]) -> Callable[[float], float]:
    # Python semantics: return the first operand that decides the result, else the last one.
    def evaluate(x: float) -> float:
        for value in values:
            result = value(x)
            if bool(result) != is_and:
                return result
        return result

    return evaluate


def _compile_compare(node: ast.Compare) -> Callable[[float], float]:
    first = _compile(node.left)
    steps = [(_COMPARE[type(op)], _compile(c)) for op, c in zip(node.ops, node.comparators)]
    if len(steps) == 1:
        ((op, right),) = steps
        return lambda x: 1.0 if op(first(x), right(x)) else 0.0

    def evaluate(x: float) -> float:
        left = first(x)
        for op, comparator in steps:  # chained: a < b < c stops at the first false link
            right = comparator(x)
            if not op(left, right):
                return 0.0
            left = right
        return 1.0

    return evaluate


def _compile_call(node: ast.Call) -> Callable[[float], float]:
    if not isinstance(node.func, ast.Name):
        raise FormulaError(f"calling `{_source(node.func)}` is not allowed: {HELP}")
    name = node.func.id
    if name not in _FUNCTIONS:
        raise FormulaError(f"`{name}` is not a function: {HELP}")
    function, fewest, most = _FUNCTIONS[name]
    count = len(node.args)
    if most is None and count < fewest:
        raise FormulaError(f"`{name}` needs at least {fewest} arguments, got {count}")
    if most is not None and not fewest <= count <= most:
        wanted = str(fewest) if fewest == most else f"{fewest} or {most}"
        plural = "" if wanted == "1" else "s"
        raise FormulaError(f"`{name}` takes {wanted} argument{plural}, got {count}")
    args = [_compile(arg) for arg in node.args]
    if count == 1:
        (only,) = args
        return lambda x: function(only(x))
    if count == 2:
        first, second = args
        return lambda x: function(first(x), second(x))
    return lambda x: function(*[arg(x) for arg in args])


def _parse(text: str) -> ast.Expression:
    try:
        with warnings.catch_warnings():
            # Tokenizer warnings (e.g. invalid escapes) must not escape as warnings or errors.
            warnings.simplefilter("ignore")
            return ast.parse(text, mode="eval")
    except SyntaxError as exc:
        where = f" at character {exc.offset}" if exc.offset else ""
        if exc.lineno and exc.lineno > 1:
            where += f" of line {exc.lineno}"
        raise FormulaError(f"could not parse the formula{where}: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError):
        raise FormulaError("could not parse the formula: it is too complex or malformed") from None


def epoch_text(epoch: float) -> str:
    """An epoch for a message: `5`, or `2.5` for a batch inside an epoch (no exponent notation)."""
    return str(int(epoch)) if float(epoch).is_integer() else f"{epoch:.6f}".rstrip("0")


class Formula:
    """A checked formula in `epoch`, compiled once and then called once per scheduler step."""

    # torch's LambdaLR.state_dict() saves `lr_lambda.__dict__` of callable objects, so it must
    # exist and hold nothing unpicklable: the compiled closures live in slots instead.
    __slots__ = ("__dict__", "_function", "_tree", "size", "text")

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise FormulaError(f"a formula must be text, not {type(text).__name__}")
        text = text.strip()
        if not text:
            raise FormulaError(f"the formula is empty: {HELP}")
        if len(text) > MAX_LENGTH:
            raise FormulaError(f"the formula is too long: at most {MAX_LENGTH} characters")
        self.text = text
        self._tree = _lambda_body(_parse(text))
        self.size = _check(self._tree, text)  # parts evaluated per call
        self._function = _compile(self._tree.body)

    def __call__(self, epoch: float) -> float:
        if not isinstance(epoch, numbers.Real):
            raise TypeError(f"epoch must be a number, not {type(epoch).__name__}")
        try:
            epoch = float(epoch)  # fractional when a per-batch scheduler asks for the epoch of a batch
        except OverflowError:
            raise FormulaError("the epoch is too large for a floating-point number") from None
        try:
            value = self._function(epoch)
        except ZeroDivisionError:
            raise FormulaError(f"division by zero at epoch {epoch_text(epoch)}") from None
        except OverflowError:
            raise FormulaError(f"a number grew too large at epoch {epoch_text(epoch)}") from None
        except ValueError:
            raise FormulaError(
                f"math domain error at epoch {epoch_text(epoch)} (for example the log or square root of a "
                "negative number, or a negative number raised to a fractional power)"
            ) from None
        if not math.isfinite(value):
            raise FormulaError(f"the formula gives {value} at epoch {epoch_text(epoch)}, not a finite number")
        return value

    def python_source(self) -> str:
        """The formula as a Python expression in `epoch`, after `from math import <names_used()>`."""
        return ast.unparse(self._tree)

    def names_used(self) -> list[str]:
        """The names from `math` the formula uses (functions and constants), sorted."""
        names = {n.id for n in ast.walk(self._tree) if isinstance(n, ast.Name)}
        return sorted((names & (set(CONSTANTS) | set(ALLOWED_FUNCTIONS))) - _BUILTIN_FUNCTIONS)

    def __reduce__(self):
        # The closures cannot be pickled; the text recompiles to the same formula.
        return (Formula, (self.text,))

    def __repr__(self) -> str:
        return f"Formula({self.text!r})"


def parse_formula(text: str) -> Formula:
    """Check and compile `text`; raises FormulaError saying what is wrong."""
    return Formula(text)
