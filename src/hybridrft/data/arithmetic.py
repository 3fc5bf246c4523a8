"""A seeded, built-in task of small arithmetic word problems: the quickstart's training data.

It needs no download, its answers are exact integers, and its demonstrations are a few short
equation lines plus `The answer is \\boxed{x}.`, so even a 135M model learns the answer format in a
few dozen steps and reward curves move on a laptop CPU.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hybridrft.data.example import Example

MIN_OPERAND = 2
MAX_OPERAND = 20  # addends and subtrahends
MAX_FACTOR = 9  # multipliers and divisors: one-digit, so a 135M model can get the arithmetic right
MAX_VALUE = 100


@dataclass(frozen=True)
class NumberRange:
    """The numbers a problem may use: addends and subtrahends up to ``max_operand``, factors and
    divisors up to ``max_factor``, every intermediate value a positive integer up to ``max_value``.
    The default is the quickstart's; a larger range makes harder (out-of-distribution) problems."""

    max_operand: int = MAX_OPERAND
    max_factor: int = MAX_FACTOR
    max_value: int = MAX_VALUE

    def __post_init__(self):
        if not (MIN_OPERAND <= self.max_factor and MIN_OPERAND <= self.max_operand <= self.max_value):
            raise ValueError(f"need {MIN_OPERAND} <= max_factor and {MIN_OPERAND} <= max_operand <= max_value: {self}")


DEFAULT_NUMBERS = NumberRange()
# Enough attempts that a large request from a big problem space never fails, while a request
# larger than a tiny space (for instance one story, one step) stops with an error, not a hang.
_ATTEMPTS_PER_EXAMPLE = 50


@dataclass(frozen=True)
class _Story:
    """Phrasings of one situation. Placeholders: {name} {Pro} {pro} {him} {his} {other} {obj};
    {n} is the operation's operand; a multiplying start uses {a} and {b}."""

    start: str  # sets the first value: "{n}" alone, or "{a}" times "{b}"
    start_multiplies: bool
    question: str
    add: tuple[str, ...]
    sub: tuple[str, ...]
    mul: tuple[str, ...] = ()
    # (sentence, question) pairs; division changes what is counted, so it only ends a problem.
    div: tuple[tuple[str, str], ...] = ()
    objects: tuple[str, ...] = ("things",)


_STORIES = (
    _Story(
        start="{name} has {n} {obj}.",
        start_multiplies=False,
        question="How many {obj} does {name} have now?",
        add=("{Pro} buys {n} more.", "{Pro} finds {n} more.", "{other} gives {him} {n} more."),
        sub=("{Pro} gives {n} to {other}.", "{Pro} loses {n} of them.", "{Pro} gives away {n}."),
        mul=("Then {his} collection grows to {n} times its size.",),
        div=(
            (
                "{Pro} shares them equally among {n} friends.",
                "How many {obj} does each friend get?",
            ),
        ),
        objects=("apples", "marbles", "stickers", "stamps", "cards", "shells", "pencils"),
    ),
    _Story(
        start="There are {a} boxes with {b} {obj} in each.",
        start_multiplies=True,
        question="How many {obj} are there now?",
        add=("{name} adds {n} more {obj}.", "{n} more {obj} are delivered."),
        sub=("{n} {obj} are broken.", "{name} takes out {n} {obj}."),
        div=(("The {obj} are packed equally into {n} bags.", "How many {obj} are in each bag?"),),
        objects=("pens", "cups", "eggs", "crayons", "balls", "toys"),
    ),
    _Story(
        start="{name} buys {a} {obj} for ${b} each.",
        start_multiplies=True,
        question="How many dollars does {name} spend in total?",
        add=("{Pro} also pays ${n} for a bag.", "{Pro} also buys a book for ${n}."),
        sub=("{Pro} uses a coupon for ${n} off.", "{Pro} gets ${n} back as a discount."),
        div=(
            (
                "{Pro} splits the cost equally among {n} people.",
                "How many dollars does each person pay?",
            ),
        ),
        objects=("notebooks", "tickets", "toy cars", "plants", "shirts", "games"),
    ),
    _Story(
        start="{name} has ${n} in {his} piggy bank.",
        start_multiplies=False,
        question="How many dollars does {name} have now?",
        add=("{Pro} earns ${n} for doing chores.", "{other} gives {him} ${n}."),
        sub=("{Pro} spends ${n} on a snack.", "{Pro} spends ${n} on a gift for {other}."),
        mul=("Then {his} savings grow to {n} times as much.",),
    ),
    _Story(
        start="A baker makes {a} trays of {obj} with {b} on each tray.",
        start_multiplies=True,
        question="How many {obj} does the baker have now?",
        add=("The baker makes {n} more {obj}.", "{other} brings {n} more {obj}."),
        sub=("{n} {obj} are sold in the morning.", "The baker gives {n} {obj} to {other}."),
        div=(("The {obj} are packed into boxes of {n}.", "How many boxes are filled?"),),
        objects=("muffins", "cookies", "rolls", "cupcakes"),
    ),
    _Story(
        start="A bus has {n} passengers.",
        start_multiplies=False,
        question="How many passengers are on the bus now?",
        add=("At a stop, {n} people get on.", "{n} more people get on."),
        sub=("At a stop, {n} people get off.", "{n} people get off the bus."),
    ),
    _Story(
        start="{name} plants {a} rows of {obj} with {b} in each row.",
        start_multiplies=True,
        question="How many {obj} does {name} have now?",
        add=("{Pro} plants {n} more.", "{other} gives {him} {n} more {obj}."),
        sub=("{n} of them do not grow.", "{Pro} gives {n} to {other}."),
        div=(
            (
                "{Pro} gives them all away equally to {n} neighbors.",
                "How many {obj} does each neighbor get?",
            ),
        ),
        objects=("tulips", "roses", "carrots", "trees"),
    ),
    _Story(
        start="A school has {a} classes with {b} students in each.",
        start_multiplies=True,
        question="How many students does the school have now?",
        add=("{n} new students join.", "Later, {n} more students arrive."),
        sub=("{n} students move away.", "{n} students leave for another school."),
        div=(("The students are put into teams of {n}.", "How many teams are there?"),),
    ),
)

_PEOPLE = (
    ("Sam", "he"), ("Mia", "she"), ("Leo", "he"), ("Ava", "she"), ("Ben", "he"), ("Zoe", "she"),
    ("Omar", "he"), ("Lily", "she"), ("Noah", "he"), ("Emma", "she"), ("Ravi", "he"),
    ("Nora", "she"), ("Kai", "he"), ("Hana", "she"),
)
_PRONOUNS = {"he": ("He", "he", "him", "his"), "she": ("She", "she", "her", "her")}


def _operands(numbers: NumberRange) -> range:
    return range(MIN_OPERAND, numbers.max_operand + 1)


def _factors(numbers: NumberRange) -> range:
    return range(MIN_OPERAND, numbers.max_factor + 1)


def _next_step(rng: random.Random, story: _Story, value: int, last: bool, numbers: NumberRange) -> tuple[str, int] | None:
    """Pick an operation and operand that keep every value a positive integer <= ``numbers.max_value``."""
    options: dict[str, list[int]] = {
        "+": [n for n in _operands(numbers) if value + n <= numbers.max_value],
        "-": [n for n in _operands(numbers) if value - n >= 1],
    }
    if story.mul:
        options["*"] = [n for n in _factors(numbers) if value * n <= numbers.max_value]
    if story.div and last:
        options["/"] = [n for n in _factors(numbers) if value % n == 0]
    feasible = [op for op, operands in options.items() if operands]
    if not feasible:
        return None
    op = rng.choice(feasible)
    return op, rng.choice(options[op])


def _apply(value: int, op: str, operand: int) -> int:
    if op == "+":
        return value + operand
    if op == "-":
        return value - operand
    if op == "*":
        return value * operand
    return value // operand


def _make_problem(rng: random.Random, steps: int, numbers: NumberRange) -> tuple[str, list[str], int]:
    """(prompt, equation lines, answer) for one random story with `steps` operations."""
    story = rng.choice(_STORIES)
    name, pronoun = rng.choice(_PEOPLE)
    other = rng.choice([person for person, _ in _PEOPLE if person != name])
    pro_cap, pro, him, his = _PRONOUNS[pronoun]
    words = {"name": name, "Pro": pro_cap, "pro": pro, "him": him, "his": his, "other": other,
             "obj": rng.choice(story.objects)}

    lines: list[str] = []
    if story.start_multiplies:
        a, b = rng.choice(_factors(numbers)), rng.choice(_factors(numbers))
        value = a * b
        sentences = [story.start.format(a=a, b=b, **words)]
        lines.append(f"{a} * {b} = {value}")
        remaining = steps - 1
    else:
        value = rng.choice(_operands(numbers))
        sentences = [story.start.format(n=value, **words)]
        remaining = steps
    question = story.question
    used: set[str] = set()

    for i in range(remaining):
        step = _next_step(rng, story, value, last=i == remaining - 1, numbers=numbers)
        if step is None:  # cannot happen with the current bounds; kept as a guard for edits
            raise RuntimeError(f"no valid operation from value {value}")
        op, operand = step
        if op == "/":
            template, question = rng.choice(story.div)
        else:
            phrasings = {"+": story.add, "-": story.sub, "*": story.mul}[op]
            # "5 new students join. 9 new students join." reads like a bug; vary while we can.
            fresh = [p for p in phrasings if p not in used] or list(phrasings)
            template = rng.choice(fresh)
        used.add(template)
        result = _apply(value, op, operand)
        sentences.append(template.format(n=operand, **words))
        lines.append(f"{value} {op} {operand} = {result}")
        value = result

    sentences.append(question.format(**words))
    return " ".join(sentences), lines, value


def arithmetic_task(
    num_examples: int, *, seed: int, min_steps: int = 1, max_steps: int = 2, numbers: NumberRange = DEFAULT_NUMBERS
) -> list[Example]:
    """`num_examples` distinct word problems from `random.Random(seed)`.

    Each has `min_steps..max_steps` operations (a start such as "4 boxes with 6 pens in each"
    counts as one multiplication) and, by default, addends 2..20, one-digit factors and divisors,
    and positive integer values up to 100 (`numbers` sets other bounds). The
    demonstration is one "a op b = c" line per operation and `The answer is \\boxed{c}.`. The list
    for a seed is a prefix of the list for the same seed and more examples.
    """
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    if not 1 <= min_steps <= max_steps:
        raise ValueError(f"need 1 <= min_steps <= max_steps, got {min_steps} and {max_steps}")
    rng = random.Random(seed)
    examples: list[Example] = []
    prompts: set[str] = set()
    for _ in range(num_examples * _ATTEMPTS_PER_EXAMPLE):
        if len(examples) == num_examples:
            break
        steps = rng.randint(min_steps, max_steps)
        prompt, lines, answer = _make_problem(rng, steps, numbers)
        if prompt in prompts:
            continue
        prompts.add(prompt)
        demonstration = "\n".join([*lines, f"The answer is \\boxed{{{answer}}}."])
        examples.append(
            Example(
                id=f"arith-{seed}-{len(examples)}",
                prompt=prompt,
                demonstrations=[demonstration],
                answer=str(answer),
                meta={"task": "arithmetic", "steps": len(lines)},
            )
        )
    if len(examples) < num_examples:
        raise ValueError(
            f"could only make {len(examples)} distinct problems with {min_steps}..{max_steps} "
            f"steps; asked for {num_examples}"
        )
    return examples


def arithmetic_splits(
    num_train: int, num_eval: int, seed: int, *, min_steps: int = 1, max_steps: int = 2,
    numbers: NumberRange = DEFAULT_NUMBERS,
) -> tuple[list[Example], list[Example]]:
    """Disjoint (train, eval) lists: no prompt appears in both.

    Both come from one stream of distinct problems: train is exactly
    `arithmetic_task(num_train, seed=seed)` and eval the next `num_eval` problems.
    """
    if num_train < 0 or num_eval < 0:
        raise ValueError(f"split sizes must be >= 0, got {num_train} and {num_eval}")
    examples = arithmetic_task(
        num_train + num_eval, seed=seed, min_steps=min_steps, max_steps=max_steps, numbers=numbers
    )
    return examples[:num_train], examples[num_train:]
