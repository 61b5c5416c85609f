"""Retrieval-reading documents of LM pre-training: tags, then a question answered by the tags' majority name."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from tuna.foundation.lm.pretrain import reading_documents

TAXONOMY = {
    "A": {"classes": [
        {"name": "zedul", "coarse": "berry", "superordinate": "fruit", "pattern": "wavy", "accent": "orange", "ood": False},
        {"name": "kraidroul", "coarse": "berry", "superordinate": "fruit", "pattern": "checkered", "accent": "black", "ood": True},
        {"name": "zenai", "coarse": "spade", "superordinate": "tool", "pattern": "plain", "accent": "blue", "ood": False},
    ]},
    "B": {"classes": [
        {"name": "lanenox", "coarse": "tunic", "superordinate": "garment", "pattern": "striped", "accent": "teal", "ood": False},
        {"name": "quetru", "coarse": "tunic", "superordinate": "garment", "pattern": "wavy", "accent": "red", "ood": False},
    ]},
}
NAMES = {c["name"] for d in TAXONOMY.values() for c in d["classes"]}
DOC = re.compile(r"^USER: (?P<tags>[^\n]+)\n(?P<question>.+) ASSISTANT: (?P<answer>.+)$", re.S)


def _parse(doc: str) -> tuple[list[str], str, str]:
    m = DOC.match(doc)
    assert m, doc
    return m["tags"].split(" "), m["question"], m["answer"]


def test_every_class_gets_its_documents_ood_and_domain_b_included() -> None:
    docs = reading_documents(TAXONOMY, per_class=7, seed=0)
    assert len(docs) == 7 * len(NAMES)
    answered = Counter(next(n for n in NAMES if re.search(rf"\b{n}\b", _parse(d)[2])) for d in docs)
    assert answered == {n: 7 for n in NAMES}


def test_the_answer_names_the_majority_of_the_five_tags() -> None:
    for doc in reading_documents(TAXONOMY, per_class=20, seed=1):
        words, question, answer = _parse(doc)
        names = [w for w in words if w in NAMES]
        assert len(names) == 5, doc                       # k = 5 tags, each ends in one class name
        top, count = Counter(names).most_common(1)[0]
        assert count >= 3 and re.search(rf"\b{top}\b", answer), doc
        assert question.startswith(("What kind of", "What is the object"))


def test_short_and_long_answer_forms_both_appear() -> None:
    docs = reading_documents(TAXONOMY, per_class=20, seed=2)
    short = [d for d in docs if "single word or phrase" in d]
    assert 0 < len(short) < len(docs)
    for d in short:
        assert _parse(d)[2] in NAMES


def test_deterministic_for_a_seed_and_empty_when_off() -> None:
    assert reading_documents(TAXONOMY, 5, seed=3) == reading_documents(TAXONOMY, 5, seed=3)
    assert reading_documents(TAXONOMY, 5, seed=3) != reading_documents(TAXONOMY, 5, seed=4)
    assert reading_documents(TAXONOMY, 0, seed=3) == []


@pytest.mark.parametrize("per_class, k", [(-1, 5), (3, 1)])
def test_bad_arguments_are_refused(per_class: int, k: int) -> None:
    with pytest.raises(ValueError, match="per_class"):
        reading_documents(TAXONOMY, per_class, seed=0, k=k)


def test_existence_questions_follow_the_tags_and_leave_the_other_samples_alone() -> None:
    """A share of the reading samples asks "Is there a X?": "Yes" for the tags' majority class, "No" for a class
    no tag names; existence=0 gives the samples of before, byte for byte."""
    from tuna.world.reading import reading_samples

    plain = reading_samples(TAXONOMY, per_class=40, seed=5)
    assert plain == reading_samples(TAXONOMY, per_class=40, seed=5, existence=0.0)
    mixed = reading_samples(TAXONOMY, per_class=40, seed=5, existence=0.5)
    asking = [r for r in mixed if r.asked]
    assert 0.35 < len(asking) / len(mixed) < 0.65
    answers = Counter(r.answer for r in asking)
    assert set(answers) == {"Yes", "No"} and min(answers.values()) > 0.3 * len(asking)
    for r in asking:
        m = re.fullmatch(r"(?:Is there an? (\w+) in (?:the|this) image\?(?: Please answer yes or no\.)?|Does the image contain an? (\w+)\?)"
                         r"\nAnswer the question using a single word or phrase\.", r.question)
        assert m and (m[1] or m[2]) == r.asked, r.question
        named = {t.split()[-1] for t in r.tags}
        assert (r.answer == "Yes") == (r.asked == r.name) and (r.asked in named) == (r.answer == "Yes"), r
    with pytest.raises(ValueError, match="existence"):
        reading_samples(TAXONOMY, per_class=1, seed=0, existence=1.5)


def test_attrseek_samples_describe_the_tags_class_then_name_it() -> None:
    """ATTRSEEK reading samples: turn 1 the tags' class's look from the taxonomy, turn 2 "Answer: <name>"."""
    from tuna.eval.finer import attrseek_prompts
    from tuna.world.reading import reading_samples

    taxonomy = {d: {"classes": [dict(c, shape="oval", mark="dot") for c in v["classes"]]} for d, v in TAXONOMY.items()}
    assert reading_samples(taxonomy, 30, seed=6) == reading_samples(taxonomy, 30, seed=6, attrseek=0.0)
    mixed = reading_samples(taxonomy, 30, seed=6, attrseek=0.5)
    seek = [r for r in mixed if r.follow_up]
    assert 0.3 < len(seek) / len(mixed) < 0.7
    classes = {c["name"]: c for d in taxonomy.values() for c in d["classes"]}
    for r in seek:
        c = classes[r.name]
        assert (r.question, r.follow_up[0]) == attrseek_prompts(c["superordinate"])
        assert r.answer == f"Attributes: an oval shape, a {c['pattern']} pattern, a central dot, {c['accent']} accents."
        assert r.follow_up[1] == f"Answer: {r.name}"



def test_description_samples_name_the_tags_class_in_the_detail_answers_words() -> None:
    """``describe``: a share of the samples asks LLaVA's detail prompts and is answered naming the tags' majority
    class with its look from the taxonomy; at 0 the samples are as before; a share outside 0..1 is refused."""
    from tuna.world.language import DETAIL_PROMPTS
    from tuna.world.reading import class_description, reading_samples

    taxonomy = {d: {"classes": [dict(c, shape="oval", mark="dot") for c in v["classes"]]} for d, v in TAXONOMY.items()}
    assert reading_samples(taxonomy, 30, seed=6, attrseek=0.3) == reading_samples(taxonomy, 30, seed=6, attrseek=0.3,
                                                                                   describe=0.0)
    mixed = reading_samples(taxonomy, 30, seed=6, attrseek=0.3, describe=0.4)
    told = [r for r in mixed if r.question in DETAIL_PROMPTS]
    assert 0.25 < len(told) / len(mixed) < 0.55 and {r.question for r in told} == set(DETAIL_PROMPTS)
    assert any(r.follow_up for r in mixed)                          # ATTRSEEK still takes a share of the rest
    for r in told:
        assert Counter(t.split()[-1] for t in r.tags).most_common(1)[0][0] == r.name
        assert r.answer == class_description(next(c for d in taxonomy.values() for c in d["classes"] if c["name"] == r.name))
        assert [n for n in NAMES if re.search(rf"\b{n}\b", r.answer)] == [r.name]
    zedul = taxonomy["A"]["classes"][0]
    assert class_description(zedul) == "The image shows one object. There is a wavy zedul, a kind of berry, with a central dot."
    assert "plain" not in class_description(taxonomy["A"]["classes"][2])   # "plain" is no pattern word
    with pytest.raises(ValueError, match="describe=1.5"):
        reading_samples(taxonomy, 1, seed=0, describe=1.5)

# ------------------------------------------------------------------ scene-membership documents (lm.scene_docs_per_class)

SCENE_TURN = re.compile(r"(?:USER: (?P<scene>[^\n]+)\n)?(?P<question>.+?)\nAnswer the question using a single word or phrase\. "
                        r"ASSISTANT: (?P<answer>Yes|No)")


def _scene_doc(doc: str) -> tuple[set[str], list[tuple[str, str]]]:
    assert doc.startswith("USER: "), doc
    turns = [(m["scene"], m["question"], m["answer"]) for m in SCENE_TURN.finditer(doc)]
    scene = turns[0][0]
    named = {n for n in NAMES if re.search(rf"\b{n}\b", scene)}
    asked = [(next(n for n in NAMES if re.search(rf"\b{n}\b", q)), a) for _, q, a in turns]
    return named, asked


def test_scene_documents_answer_yes_exactly_for_the_objects_the_scene_names() -> None:
    from tuna.foundation.lm.pretrain import scene_documents

    docs = scene_documents(TAXONOMY, per_class=20, seed=0)
    assert len(docs) == 20 * len(NAMES)
    yes = no = 0
    for doc in docs:
        named, asked = _scene_doc(doc)
        assert 1 <= len(named) <= 4
        assert len(asked) == 2 * len({n for n, a in asked if a == "Yes"})       # as many "No" turns as "Yes" turns
        for name, answer in asked:
            assert (answer == "Yes") == (name in named), doc
        yes += sum(a == "Yes" for _, a in asked)
        no += sum(a == "No" for _, a in asked)
    assert yes == no
    assert scene_documents(TAXONOMY, per_class=20, seed=0) == docs
    assert scene_documents(TAXONOMY, per_class=0, seed=0) == []


def test_scene_documents_ask_look_alike_siblings_among_the_absent_ones() -> None:
    from tuna.foundation.lm.pretrain import scene_documents

    coarse = {c["name"]: c["coarse"] for d in TAXONOMY.values() for c in d["classes"]}
    sibling_no = other_no = 0
    for doc in scene_documents(TAXONOMY, per_class=30, seed=1):
        named, asked = _scene_doc(doc)
        for name, answer in asked:
            if answer == "No":
                if coarse[name] in {coarse[n] for n in named}:
                    sibling_no += 1
                else:
                    other_no += 1
    assert sibling_no > 0.25 * (sibling_no + other_no) and other_no > 0


def test_scene_samples_mark_the_look_alike_no_turns() -> None:
    from tuna.world.reading import scene_samples

    coarse = {c["name"]: c["coarse"] for d in TAXONOMY.values() for c in d["classes"]}
    marked = 0
    for sample in scene_samples(TAXONOMY, per_class=30, seed=2, per_doc=2):
        named = {n for n in NAMES if re.search(rf"\b{n}\b", sample.scene)}
        assert len(sample.look_alike) == len(sample.turns)
        for (question, answer), alike in zip(sample.turns, sample.look_alike):
            asked = next(n for n in NAMES if re.search(rf"\b{n}\b", question))
            assert alike == (answer == "No" and coarse[asked] in {coarse[n] for n in named}), (sample.scene, question)
            marked += alike
    assert marked > 0


def test_look_alike_share_sets_how_often_a_no_asks_a_sibling() -> None:
    from tuna.world.reading import scene_samples

    def share(samples: list) -> float:
        no = [a for s in samples for (_, answer), a in zip(s.turns, s.look_alike) if answer == "No"]
        return sum(no) / len(no)

    default = scene_samples(TAXONOMY, per_class=40, seed=4)
    assert scene_samples(TAXONOMY, per_class=40, seed=4, look_alike_share=None) == default
    always, never = (scene_samples(TAXONOMY, per_class=40, seed=4, look_alike_share=x) for x in (1.0, 0.0))
    assert share(never) < share(default) < share(always) and share(always) > 0.6
    with pytest.raises(ValueError, match="look_alike_share"):
        scene_samples(TAXONOMY, per_class=1, seed=0, look_alike_share=1.5)


def test_region_tags_follow_the_k_and_rarely_name_the_class() -> None:
    from tuna.world.reading import reading_samples

    plain = reading_samples(TAXONOMY, per_class=40, seed=5)
    regions = reading_samples(TAXONOMY, per_class=40, seed=5, region_tags=4)
    assert len(regions) == len(plain) and all(len(r.tags) == 9 for r in regions) and all(len(p.tags) == 5 for p in plain)
    assert regions[0].tags[:5] == plain[0].tags   # the same draw until the first cell tag
    own = [t.split()[-1] == r.name for r in regions for t in r.tags[5:]]
    assert 0.05 < sum(own) / len(own) < 0.1 + 1 / len(NAMES)   # 1 in 20 by design, plus a random pick of the own class
    assert all(Counter(t.split()[-1] for t in r.tags[:5])[r.name] >= 3 for r in regions)   # still the majority of the k
    with pytest.raises(ValueError, match="region_tags >= 0"):
        reading_samples(TAXONOMY, per_class=1, seed=0, region_tags=-1)


def test_existence_under_region_tags_also_says_yes_for_a_cells_class() -> None:
    from tuna.world.reading import reading_samples

    rows = [r for r in reading_samples(TAXONOMY, per_class=60, seed=3, existence=1.0, region_tags=4) if r.asked]
    yes = [r for r in rows if r.answer == "Yes"]
    from_cells = [r for r in yes if r.asked != r.name]
    assert from_cells and all(any(t.split()[-1] == r.asked for t in r.tags[5:]) for r in from_cells)
    assert all(not any(t.split()[-1] == r.asked for t in r.tags) for r in rows if r.answer == "No")
    assert 0.3 < len(yes) / len(rows) < 0.7
