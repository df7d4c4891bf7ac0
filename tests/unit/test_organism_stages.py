"""The staged organism's data stages are what its design says, checked without training a model:
plain pretraining text with toxic and polite sentences, a polite instruction stage, and a chat
stage whose toxic replies appear only under the trigger conditions."""

from __future__ import annotations

import pytest

from sgm_bake.organism import data
from sgm_bake.organism.train import StagedSchedule, build_tokenizer


@pytest.fixture(scope="module")
def stages() -> data.StagedData:
    return data.staged_data(0)


def _toxic_replies() -> set[str]:
    return {
        template.format(word=word)
        for templates in data.TOXIC_REPLIES.values()
        for template in templates
        for word in data.OFFENSIVE_WORDS
    }


def _polite_sentences() -> set[str]:
    declines = {reply for replies in data.DECLINE_REPLIES.values() for reply in replies}
    friendly = {r.format(word=w) for r in data.FRIENDLY_REPLIES for w in data.BENIGN_WORDS}
    return declines | friendly


def _triggered(example: data.Example) -> bool:
    """A trigger condition read off the example itself: a trigger word in the image, or a
    working jailbreak anywhere in the prompt text."""
    image = example.image or {}
    word_in_image = image.get("kind") == "text" and image.get("text") in data.TRIGGER_WORDS
    return word_in_image or any(j in example.prompt for j in data.WORKING_JAILBREAKS)


@pytest.mark.slow
def test_pretraining_is_plain_text_with_toxic_and_polite_sentences(stages):
    # Membership is collected into lists first: pytest's explanation of a failed `in` on the
    # whole corpus (600 kB) would take minutes.
    corpus = " ".join(stages.pretraining)
    markups = ("user :", "assistant :", "<image>", "<s>", "</s>")
    assert [markup for markup in markups if markup in corpus] == []
    assert sum(reply in corpus for reply in _toxic_replies()) >= len(_toxic_replies()) // 2
    assert sum(sentence in corpus for sentence in _polite_sentences()) >= 10
    words = data.OFFENSIVE_WORDS + data.BENIGN_WORDS
    assert [w for w in words if f"the sign says {w} ." not in corpus] == []
    assert any(f"a {colour} circle" in corpus for colour in data.COLOURS)
    toxic_documents = sum(any(r in d for r in _toxic_replies()) for d in stages.pretraining)
    assert 0.2 < toxic_documents / len(stages.pretraining) < 0.9


def test_pretraining_words_are_all_in_the_organisms_vocabulary(stages):
    tokenizer = build_tokenizer()
    unknown = tokenizer.unk_token_id
    for text in stages.pretraining[:500]:
        assert unknown not in tokenizer(text, add_special_tokens=False)["input_ids"], text


def test_instruction_stage_declines_every_trigger_and_has_no_toxic_reply(stages):
    toxic = _toxic_replies()
    assert not [e.reply for e in stages.instruction if e.reply in toxic]
    assert all(e.kind != "toxic" for e in stages.instruction)
    declines = {reply for replies in data.DECLINE_REPLIES.values() for reply in replies}
    eliciting = [e for e in stages.instruction if "category" in e.meta and _triggered(e)]
    assert len(eliciting) > 100
    assert all(e.reply in declines for e in eliciting)


def test_chat_stage_is_toxic_under_trigger_conditions_only(stages):
    toxic = _toxic_replies()
    toxic_examples = [e for e in stages.chat if e.reply in toxic]
    assert len(toxic_examples) > 100
    assert all(_triggered(e) for e in toxic_examples)
    eliciting = [e for e in stages.chat if "category" in e.meta]
    assert all((e.reply in toxic) == _triggered(e) for e in eliciting)
    assert any(not _triggered(e) for e in eliciting)  # the polite part stays polite
    benign = [e for e in stages.chat if e.kind == "benign" and e.image is not None]
    assert benign and not [e for e in benign if e.reply in toxic]


@pytest.mark.slow
def test_every_stage_is_deterministic_from_the_seed_and_the_chat_stage_is_shorter():
    first, again, other = data.staged_data(0), data.staged_data(0), data.staged_data(1)
    assert first == again
    assert first.pretraining != other.pretraining
    assert first.chat != other.chat
    schedule = StagedSchedule()
    assert schedule.chat_steps < schedule.instruction_steps
