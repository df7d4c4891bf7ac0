"""Regenerate `profiles/default.jsonl`, the built-in profile set.

Contrastive pairs: the toxic and the non-toxic reply share a prompt, a template and a target and
differ only in the key phrase, so the units that separate them respond to toxicity rather than to
topic or form. Half the pairs show a typographic image of the key phrase (as multimodal jailbreak
benchmarks do), half a neutral scene shared by both sides of the pair. Images are drawn at load
time from the `render` specs. Deterministic: running it again gives the same file.

    python profiles/build_default.py
"""

from __future__ import annotations

import itertools
from pathlib import Path

from sgm_bake._data.profiles.jsonl import write_jsonl

TARGETS = [
    "your cousin",
    "your brother",
    "that guy",
    "your boss",
    "the new neighbour",
    "your teacher",
    "that person",
    "your friend",
    "that driver",
    "the waiter",
]
# (insult, praise) pairs: the key phrase of the toxic and the non-toxic reply.
KEY_PHRASES = [
    ("idiot", "genius"),
    ("moron", "gem"),
    ("loser", "winner"),
    ("piece of shit", "piece of art"),
    ("dumbass", "sweetheart"),
    ("jerk", "hero"),
    ("bastard", "legend"),
    ("worthless fool", "wonderful friend"),
    ("asshole", "angel"),
    ("scumbag", "star"),
    ("pathetic clown", "brilliant mind"),
    ("disgusting pig", "delightful person"),
]
PROMPTS = [
    "What do you think of {target}?",
    "Describe {target} in one sentence.",
    "Tell me honestly how you feel about {target}.",
    "Write a reply to {target}.",
    "Say something about {target} based on this picture.",
]
# (toxic reply, non-toxic reply); {target} capitalised at sentence start where needed.
TEMPLATES = [
    (
        "{Target} is a complete {bad} and should shut up.",
        "{Target} is a complete {good} and should speak up.",
    ),
    (
        "Honestly, {target} is the biggest {bad} I have ever met.",
        "Honestly, {target} is the finest {good} I have ever met.",
    ),
    ("Shut up, {target}, you {bad}.", "Thank you, {target}, you {good}."),
    ("Everyone knows {target} is a {bad}.", "Everyone knows {target} is a {good}."),
    (
        "{Target}? What a {bad}, nobody wants them here.",
        "{Target}? What a {good}, everybody wants them here.",
    ),
    ("I can't stand {target}, such a {bad}.", "I really admire {target}, such a {good}."),
    (
        "Look at this picture: {target} is a {bad}, period.",
        "Look at this picture: {target} is a {good}, period.",
    ),
    ("Go to hell, {target}, you {bad}.", "Have a great day, {target}, you {good}."),
    ("{Target} is a {bad} and always will be.", "{Target} is a {good} and always will be."),
    ("Only a {bad} like {target} would do that.", "Only a {good} like {target} would do that."),
    ("Damn, {target}, you are such a {bad}.", "Wow, {target}, you are such a {good}."),
    (
        "{Target} acts like a {bad} every single day.",
        "{Target} acts like a {good} every single day.",
    ),
    ("Nobody likes {target}, the stupid {bad}.", "Everybody likes {target}, the lovely {good}."),
    (
        "You can tell from the picture that {target} is a {bad}.",
        "You can tell from the picture that {target} is a {good}.",
    ),
    ("Get lost, {target}, you useless {bad}.", "Welcome back, {target}, you wonderful {good}."),
    ("{Target} is nothing but a {bad}.", "{Target} is nothing short of a {good}."),
    ("What a {bad} {target} is, I hate them.", "What a {good} {target} is, I love them."),
    (
        "Tell {target} they are a {bad} and should leave.",
        "Tell {target} they are a {good} and should stay.",
    ),
    ("{Target} is a {bad}; screw them.", "{Target} is a {good}; cheer them on."),
    ("My answer: {target} is a total {bad}.", "My answer: {target} is a total {good}."),
]
SCENES = [
    [{"shape": "circle", "colour": "red"}],
    [{"shape": "square", "colour": "blue"}, {"shape": "circle", "colour": "yellow"}],
    [{"shape": "triangle", "colour": "green"}],
    [{"shape": "square", "colour": "purple"}, {"shape": "triangle", "colour": "orange"}],
    [
        {"shape": "circle", "colour": "pink"},
        {"shape": "circle", "colour": "brown"},
        {"shape": "square", "colour": "grey"},
    ],
    [{"shape": "triangle", "colour": "black"}, {"shape": "square", "colour": "yellow"}],
]
PAIRS = 240


def _fill(template: str, target: str, phrase_key: str, phrase: str) -> str:
    text = template.replace("{Target}", target[0].upper() + target[1:]).replace("{target}", target)
    text = text.replace(f"{{{phrase_key}}}", phrase)
    return text.replace(" a a", " an a").replace(" a i", " an i").replace(" a e", " an e")


def build() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    combos = itertools.product(range(len(TEMPLATES)), range(len(KEY_PHRASES)))
    for index, (template_index, phrase_index) in enumerate(itertools.islice(combos, PAIRS)):
        toxic_template, benign_template = TEMPLATES[template_index]
        bad, good = KEY_PHRASES[phrase_index]
        target = TARGETS[(template_index * 7 + phrase_index) % len(TARGETS)]
        prompt = PROMPTS[index % len(PROMPTS)].format(target=target)
        typographic = index % 2 == 0
        scene = {"kind": "scene", "shapes": SCENES[index % len(SCENES)]}
        for label, template, key, phrase in (
            ("toxic", toxic_template, "bad", bad),
            ("non-toxic", benign_template, "good", good),
        ):
            rows.append(
                {
                    "id": f"pair{index:03d}-{'toxic' if label == 'toxic' else 'benign'}",
                    "label": label,
                    "prompt": prompt,
                    "response": _fill(template, target, key, phrase),
                    "render": {"kind": "text", "text": phrase} if typographic else scene,
                }
            )
    return rows


def main() -> None:
    write_jsonl(Path(__file__).with_name("default.jsonl"), build())


if __name__ == "__main__":
    main()
