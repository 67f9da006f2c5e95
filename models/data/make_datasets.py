"""Generate the small SFT and DPO datasets used by the SmolLM2 LoRA demo.

This script writes four JSONL files next to itself:

* ``smol_instruct.jsonl``          480 supervised examples (OpenAI chat format)
* ``smol_instruct_heldout.jsonl``   64 held-out supervised examples
* ``smol_prefs.jsonl``             320 preference pairs (OpenAI preference format)
* ``smol_prefs_heldout.jsonl``      64 held-out preference pairs

Every example is a short question with a checkable answer (arithmetic,
comparisons, simple word games, weekdays).  The assistant always answers in
one house style, ``"The answer is X."``, so that improvement after fine-tuning
is easy to measure.  Preference pairs pair that correct answer with a worse
one: a wrong answer, a refusal, a rambling non-answer, a shouted answer, or a
correct answer buried in filler.

All four files draw from one pool of problems, so no problem (and in
particular no user question) appears in more than one file.  The only
exception is the weekday family, which has just seven distinct problems: there
the question text itself is kept unique, so the same weekday can appear in two
files but always with a different phrasing.

The output is deterministic.  To regenerate it, run from the repository root:

    python models/data/make_datasets.py
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SEED = 20240611
SYSTEM_PROMPT = "Answer with one short sentence."
OUTPUT_DIR = Path(__file__).resolve().parent

SFT_TRAIN_SIZE = 480
SFT_HELDOUT_SIZE = 64
PREFS_TRAIN_SIZE = 320
PREFS_HELDOUT_SIZE = 64

# Families with only a handful of distinct problems get a fixed, smaller
# share of each split; the remaining families share the rest evenly.
SMALL_FAMILY_QUOTAS: dict[str, dict[str, int]] = {
    "multiplication": {"sft_train": 40, "sft_heldout": 6, "prefs_train": 20, "prefs_heldout": 6},
    "weekday": {"sft_train": 18, "sft_heldout": 3, "prefs_train": 10, "prefs_heldout": 3},
}

WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

# Short everyday words for the letter-counting and word-reversing families.
# None of them is a palindrome, so a reversed word always differs from the word.
WORDS = [
    "apple",
    "bread",
    "chair",
    "cloud",
    "dog",
    "eagle",
    "flame",
    "garden",
    "horse",
    "island",
    "jacket",
    "kettle",
    "lemon",
    "magnet",
    "needle",
    "orange",
    "pencil",
    "quiet",
    "rabbit",
    "silver",
    "table",
    "umbrella",
    "violin",
    "window",
    "yellow",
    "zebra",
    "basket",
    "candle",
    "dragon",
    "engine",
    "forest",
    "guitar",
    "hammer",
    "insect",
    "jungle",
    "kitten",
    "ladder",
    "monkey",
    "number",
    "ocean",
    "planet",
    "rocket",
    "shadow",
    "tomato",
    "valley",
    "wallet",
    "cat",
    "sun",
    "moon",
    "star",
    "tree",
    "fish",
    "bird",
    "lamp",
    "desk",
    "book",
    "milk",
    "rain",
    "snow",
    "wind",
    "road",
    "ship",
    "frog",
    "goat",
    "bell",
    "coin",
    "drum",
    "fork",
    "gift",
    "hill",
    "king",
    "lake",
    "mask",
    "nest",
    "park",
    "ring",
    "sock",
    "tent",
    "wolf",
    "yarn",
    "bottle",
    "carpet",
    "doctor",
    "farmer",
    "hotel",
    "pillow",
    "ticket",
    "winter",
    "summer",
    "spring",
    "autumn",
    "castle",
    "circle",
    "bridge",
    "button",
    "cookie",
    "pepper",
    "puzzle",
    "river",
    "stone",
    "train",
    "plant",
    "grape",
    "honey",
    "music",
    "paper",
    "spoon",
    "tiger",
    "water",
    "smile",
    "light",
    "heart",
    "clock",
    "brush",
    "crown",
    "glass",
    "mouse",
    "queen",
    "sheep",
    "storm",
    "beach",
    "cabin",
    "field",
    "piano",
    "robot",
    "salad",
    "truck",
    "whale",
]

ADJECTIVES = [
    "good",
    "happy",
    "blue",
    "quiet",
    "bright",
    "small",
    "warm",
    "cold",
    "green",
    "little",
    "sweet",
    "fast",
    "slow",
    "red",
    "old",
    "new",
    "big",
    "soft",
    "dark",
    "sunny",
    "clean",
    "fresh",
    "brave",
    "kind",
]
NOUNS = [
    "morning",
    "river",
    "garden",
    "house",
    "dog",
    "day",
    "night",
    "cat",
    "friend",
    "song",
    "road",
    "tree",
    "book",
    "city",
    "cake",
    "window",
    "boat",
    "hill",
    "lamp",
    "door",
    "bird",
    "coat",
    "field",
    "train",
]

TEMPLATES: dict[str, list[str]] = {
    "addition": [
        "What is {a} + {b}?",
        "What is {a} plus {b}?",
        "Add {a} and {b}.",
        "Compute the sum of {a} and {b}.",
        "What do you get when you add {a} to {b}?",
    ],
    "subtraction": [
        "What is {a} - {b}?",
        "What is {a} minus {b}?",
        "Subtract {b} from {a}.",
        "What do you get if you take {b} away from {a}?",
    ],
    "multiplication": [
        "What is {a} times {b}?",
        "What is {a} x {b}?",
        "Multiply {a} by {b}.",
        "What is the product of {a} and {b}?",
    ],
    "larger": [
        "Which is larger, {a} or {b}?",
        "Which number is bigger: {a} or {b}?",
        "Of {a} and {b}, which is greater?",
        "Pick the larger number: {a} or {b}.",
    ],
    "count_letters": [
        "How many letters are in the word '{w}'?",
        "Count the letters in '{w}'.",
        "How many letters does '{w}' have?",
        "What is the number of letters in '{w}'?",
    ],
    "reverse_word": [
        "Reverse the word '{w}'.",
        "Spell '{w}' backwards.",
        "What is '{w}' written in reverse?",
        "Write the letters of '{w}' in reverse order.",
    ],
    "uppercase": [
        "Write '{p}' in capital letters.",
        "Convert '{p}' to uppercase.",
        "What is '{p}' in all caps?",
        "Rewrite '{p}' using only uppercase letters.",
    ],
    "next_in_sequence": [
        "What number comes next: {s}?",
        "Continue the sequence: {s}.",
        "What is the next number in {s}?",
        "Find the next term: {s}.",
    ],
    "sort_numbers": [
        "Sort {n} from smallest to largest.",
        "Put {n} in ascending order.",
        "Arrange these numbers from low to high: {n}.",
        "List {n} in increasing order.",
    ],
    "weekday": [
        "What day comes after {d}?",
        "If today is {d}, what day is tomorrow?",
        "Which day of the week follows {d}?",
        "Name the day after {d}.",
        "What weekday comes right after {d}?",
    ],
}

FAMILIES = list(TEMPLATES)

REFUSALS = [
    "I'm sorry, I can't help with that.",
    "I am not able to answer that question.",
    "Sorry, I cannot do that for you.",
    "I'd rather not answer that.",
]
RAMBLES = [
    "Well, that is an interesting question, and there are many ways to think about it.",
    "Hmm, let me think. Questions like this can be tricky, so it really depends.",
    "That is a good one. People often wonder about things like this every day.",
    "There are several steps involved here, and each of them matters a great deal.",
]
FILLER_OPENINGS = [
    "Great question, let me think about it.",
    "Oh, I love questions like this one!",
    "Okay, thanks so much for asking me this.",
]
FILLER_CLOSINGS = [
    "I hope this helps you!",
    "Let me know if you need more.",
    "Have a lovely day!",
]

REJECTION_KINDS = ["wrong_answer", "refusal", "rambling", "shouting", "buried_in_filler"]


@dataclass(frozen=True)
class Problem:
    """One question with its correct answer and a plausible wrong answer."""

    family: str
    key: tuple  # identifies the underlying problem, used to keep splits disjoint
    question: str
    answer: str  # the bare result, e.g. "42" or "pmal"
    wrong_answer: str  # a close but incorrect result


def house_style(result: str) -> str:
    """Format a result in the single answer style used across all files."""
    return f"The answer is {result}."


def small_offset(rng: random.Random, value: int, minimum: int = 0) -> int:
    """Return a number 1-3 away from value, never below minimum."""
    while True:
        candidate = value + rng.choice([-3, -2, -1, 1, 2, 3])
        if candidate >= minimum:
            return candidate


def make_addition(rng: random.Random) -> Problem:
    a, b = rng.randint(1, 99), rng.randint(1, 99)
    question = rng.choice(TEMPLATES["addition"]).format(a=a, b=b)
    total = a + b
    return Problem(
        "addition", (min(a, b), max(a, b)), question, str(total), str(small_offset(rng, total))
    )


def make_subtraction(rng: random.Random) -> Problem:
    a, b = rng.randint(10, 99), rng.randint(1, 99)
    if b > a:
        a, b = b, a
    question = rng.choice(TEMPLATES["subtraction"]).format(a=a, b=b)
    difference = a - b
    return Problem(
        "subtraction", (a, b), question, str(difference), str(small_offset(rng, difference))
    )


def make_multiplication(rng: random.Random) -> Problem:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    question = rng.choice(TEMPLATES["multiplication"]).format(a=a, b=b)
    product = a * b
    return Problem(
        "multiplication", (a, b), question, str(product), str(small_offset(rng, product))
    )


def make_larger(rng: random.Random) -> Problem:
    a, b = rng.sample(range(1, 200), 2)
    question = rng.choice(TEMPLATES["larger"]).format(a=a, b=b)
    return Problem("larger", (min(a, b), max(a, b)), question, str(max(a, b)), str(min(a, b)))


def make_count_letters(rng: random.Random) -> Problem:
    word = rng.choice(WORDS)
    question = rng.choice(TEMPLATES["count_letters"]).format(w=word)
    count = len(word)
    wrong = count + rng.choice([-1, 1])
    return Problem("count_letters", (word,), question, str(count), str(wrong))


def make_reverse_word(rng: random.Random) -> Problem:
    word = rng.choice(WORDS)
    question = rng.choice(TEMPLATES["reverse_word"]).format(w=word)
    # The wrong answer is the word left as it was.
    return Problem("reverse_word", (word,), question, word[::-1], word)


def make_uppercase(rng: random.Random) -> Problem:
    phrase = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    question = rng.choice(TEMPLATES["uppercase"]).format(p=phrase)
    first, second = phrase.split()
    # The wrong answer only capitalises the first word.
    return Problem("uppercase", (phrase,), question, phrase.upper(), f"{first.upper()} {second}")


def make_next_in_sequence(rng: random.Random) -> Problem:
    start, step = rng.randint(1, 30), rng.randint(2, 12)
    terms = [start + step * i for i in range(4)]
    shown = ", ".join(str(t) for t in terms)
    question = rng.choice(TEMPLATES["next_in_sequence"]).format(s=shown)
    following = terms[-1] + step
    wrong = terms[-1] + step + rng.choice([-1, 1])
    return Problem("next_in_sequence", (start, step), question, str(following), str(wrong))


def make_sort_numbers(rng: random.Random) -> Problem:
    numbers = rng.sample(range(1, 60), rng.choice([3, 4]))
    shown = ", ".join(str(n) for n in numbers)
    question = rng.choice(TEMPLATES["sort_numbers"]).format(n=shown)
    ordered = sorted(numbers)
    # The wrong answer swaps two neighbouring numbers of the sorted list.
    swapped = list(ordered)
    i = rng.randrange(len(swapped) - 1)
    swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
    return Problem(
        "sort_numbers",
        tuple(ordered),
        question,
        ", ".join(str(n) for n in ordered),
        ", ".join(str(n) for n in swapped),
    )


def make_weekday(rng: random.Random) -> Problem:
    index = rng.randrange(7)
    template = rng.choice(TEMPLATES["weekday"])
    question = template.format(d=WEEKDAYS[index])
    # Only 7 distinct problems exist, so the key is the question text itself.
    return Problem(
        "weekday",
        (question,),
        question,
        WEEKDAYS[(index + 1) % 7],
        WEEKDAYS[(index + 2) % 7],
    )


MAKERS: dict[str, Callable[[random.Random], Problem]] = {
    "addition": make_addition,
    "subtraction": make_subtraction,
    "multiplication": make_multiplication,
    "larger": make_larger,
    "count_letters": make_count_letters,
    "reverse_word": make_reverse_word,
    "uppercase": make_uppercase,
    "next_in_sequence": make_next_in_sequence,
    "sort_numbers": make_sort_numbers,
    "weekday": make_weekday,
}


def family_quotas(split: str, size: int) -> dict[str, int]:
    """How many problems of each family go into one split of the given size."""
    quotas = {family: SMALL_FAMILY_QUOTAS[family][split] for family in SMALL_FAMILY_QUOTAS}
    others = [family for family in FAMILIES if family not in quotas]
    remaining = size - sum(quotas.values())
    base, extra = divmod(remaining, len(others))
    for i, family in enumerate(others):
        quotas[family] = base + (1 if i < extra else 0)
    return quotas


def draw_problems(
    rng: random.Random, family: str, count: int, used_keys: set[tuple]
) -> list[Problem]:
    """Draw count problems of one family whose keys are not in used_keys yet."""
    problems: list[Problem] = []
    attempts = 0
    while len(problems) < count:
        attempts += 1
        if attempts > 100_000:
            raise RuntimeError(f"ran out of distinct problems for family {family!r}")
        problem = MAKERS[family](rng)
        full_key = (family, problem.key)
        if full_key in used_keys:
            continue
        used_keys.add(full_key)
        problems.append(problem)
    return problems


def draw_split(rng: random.Random, split: str, size: int, used_keys: set[tuple]) -> list[Problem]:
    """Draw all problems for one split, in shuffled order."""
    problems: list[Problem] = []
    for family, count in family_quotas(split, size).items():
        problems.extend(draw_problems(rng, family, count, used_keys))
    rng.shuffle(problems)
    return problems


def rejected_answer(rng: random.Random, problem: Problem, kind: str) -> str:
    """Build a worse assistant reply of the given kind for a problem."""
    correct = house_style(problem.answer)
    if kind == "wrong_answer":
        return house_style(problem.wrong_answer)
    if kind == "refusal":
        return rng.choice(REFUSALS)
    if kind == "rambling":
        return rng.choice(RAMBLES)
    if kind == "shouting":
        return correct[:-1].upper() + "!!!"
    if kind == "buried_in_filler":
        return f"{rng.choice(FILLER_OPENINGS)} {correct} {rng.choice(FILLER_CLOSINGS)}"
    raise ValueError(f"unknown rejection kind: {kind}")


def sft_record(problem: Problem) -> dict:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": problem.question},
            {"role": "assistant", "content": house_style(problem.answer)},
        ]
    }


def preference_record(problem: Problem, rejected: str) -> dict:
    return {
        "input": {
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": problem.question},
            ]
        },
        "preferred_output": [{"role": "assistant", "content": house_style(problem.answer)}],
        "non_preferred_output": [{"role": "assistant", "content": rejected}],
    }


def preference_records(rng: random.Random, problems: list[Problem]) -> list[dict]:
    """Pair each problem with a rejected reply, cycling evenly through the kinds."""
    kinds = [REJECTION_KINDS[i % len(REJECTION_KINDS)] for i in range(len(problems))]
    rng.shuffle(kinds)
    return [
        preference_record(problem, rejected_answer(rng, problem, kind))
        for problem, kind in zip(problems, kinds, strict=True)
    ]


def write_jsonl(path: Path, records: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def main() -> None:
    rng = random.Random(SEED)
    used_keys: set[tuple] = set()

    # Held-out splits are drawn first so that they get their full share of
    # the small families before the training splits use them up.
    sft_heldout = draw_split(rng, "sft_heldout", SFT_HELDOUT_SIZE, used_keys)
    prefs_heldout = draw_split(rng, "prefs_heldout", PREFS_HELDOUT_SIZE, used_keys)
    sft_train = draw_split(rng, "sft_train", SFT_TRAIN_SIZE, used_keys)
    prefs_train = draw_split(rng, "prefs_train", PREFS_TRAIN_SIZE, used_keys)

    outputs = {
        "smol_instruct.jsonl": [sft_record(p) for p in sft_train],
        "smol_instruct_heldout.jsonl": [sft_record(p) for p in sft_heldout],
        "smol_prefs.jsonl": preference_records(rng, prefs_train),
        "smol_prefs_heldout.jsonl": preference_records(rng, prefs_heldout),
    }
    for name, records in outputs.items():
        write_jsonl(OUTPUT_DIR / name, records)
        print(f"wrote {len(records):4d} records to {OUTPUT_DIR / name}")


if __name__ == "__main__":
    main()
