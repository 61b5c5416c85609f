"""The evaluation metrics on hand-computed cases, then on the smoke world's real eval files with the
ground truth as the "prediction" (a perfect model must score perfectly)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import World
from tuna.eval.chair import (
    chair_metrics,
    chair_vocabulary,
    mention_index,
    object_mentions,
)
from tuna.eval.finer import (
    EM_WINDOW,
    answer_tokens,
    attrseek_prompts,
    direct_prompt,
    finer_answer,
    finer_level_hits,
    finer_metrics,
    finer_normalize,
    finer_questions,
    level_hits,
    normalize,
    tag_quality,
    token_f1,
)
from tuna.eval.mme import mme_metrics, read_mme_answer
from tuna.eval.pope import (
    parse_yes_no,
    pope_by_tags,
    pope_metrics,
    pope_summary,
    question_object,
    score_pope_rows,
)
from tuna.formats import MmeItem, coco_objects_by_image, load_coco, load_finer, load_mme
from tuna.readers.pope import load_pope_splits
from tuna.world.questions import MME_TASKS, POPE_SPLITS

# ------------------------------------------------------------------------------------------- POPE


@pytest.mark.parametrize(("text", "want"), [
    ("No.", "no"),
    ("No", "no"),
    ("no, there is not.", "no"),
    ("There is no zedul in the image.", "no"),
    ("There is no", "no"),
    ("I do not see one.", "no"),
    ("Yes, there is a zedul in the image.", "yes"),
    ("yes", "yes"),
    ("YES", "yes"),
    ("Yes. There is no quarei.", "yes"),       # only the first sentence counts
    ("Not sure", "yes"),                       # POPE's quirk: capitalised "Not" is not in its list
    ("NO", "yes"),                             # case-sensitive: "NO" is none of "No", "not", "no"
    ("Nope", "yes"),                           # whole words only
    ("No\nthere is none", "yes"),              # split on " " only: the word is "No\nthere"
    ("No, it is not", "no"),                   # commas are deleted before splitting
    ("  No  ", "no"),                          # stripped first, as LLaVA writes its answers
    ("", None),
    ("   \n\t", None),
])
def test_pope_parsing_follows_the_pope_rule(text: str, want: str | None) -> None:
    assert parse_yes_no(text) == want


def test_pope_empty_answer_is_wrong_where_evaluate_py_reads_yes() -> None:
    """POPE's evaluate.py (RUCAIBox/POPE) reads "" as "yes": "".split(" ") is [""], which holds none of
    "No", "not", "no"; so two empty answers to a yes and a no question would score accuracy 0.5, recall
    1.0, yes-ratio 1.0 there. Ours: unparsed, wrong on either label, never a predicted "yes"."""
    m = pope_metrics(["", "  "], ["yes", "no"])
    assert m["unparsed"] == 2 and (m["tp"], m["fp"], m["tn"], m["fn"]) == (0, 0, 0, 0)
    assert (m["accuracy"], m["recall"], m["yes_ratio"], m["precision"]) == (0.0, 0.0, 0.0, 0.0)


def test_pope_metrics_hand_computed() -> None:
    answers = ["Yes, there is a zedul in the image.", "No.", "Not sure", "There is no zedul.",
               "yes", "", "No, it is not.", "   "]
    labels = ["yes", "no", "no", "no", "yes", "yes", "yes", "no"]
    # parsed: yes no yes no yes - no -  -> TP 2 (0, 4), FP 1 (2), TN 2 (1, 3), FN 1 (6), unparsed 2 (5, 7)
    m = pope_metrics(answers, labels)
    assert (m["tp"], m["fp"], m["tn"], m["fn"], m["unparsed"], m["n"]) == (2, 1, 2, 1, 2, 8)
    assert m["accuracy"] == pytest.approx(4 / 8)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 4)          # the unparsed "yes" (5) is a miss
    assert m["f1"] == pytest.approx(4 / 7)
    assert m["yes_ratio"] == pytest.approx(3 / 8)


def test_pope_all_yes_and_all_no() -> None:
    labels = ["yes", "no", "yes", "no"]
    m = pope_metrics(["Yes"] * 4, labels)
    assert (m["accuracy"], m["precision"], m["recall"], m["yes_ratio"]) == (0.5, 0.5, 1.0, 1.0)
    assert m["f1"] == pytest.approx(2 / 3)
    m = pope_metrics(["No"] * 4, labels)
    assert (m["accuracy"], m["precision"], m["recall"], m["f1"], m["yes_ratio"]) == (0.5, 0.0, 0.0, 0.0, 0.0)


def test_pope_summary_is_the_mean_over_splits() -> None:
    s = pope_summary({"random": {"f1": 0.9, "accuracy": 0.8}, "popular": {"f1": 0.6, "accuracy": 0.7}})
    assert s["f1"] == pytest.approx(0.75) and s["accuracy"] == pytest.approx(0.75) and s["splits"] == 2


def test_pope_by_tags_splits_the_questions_by_whether_a_tag_names_their_object() -> None:
    """The object comes from POPE's template; a tag names it by the whole-word rule (plural too, not inside another
    word); each part is scored as a split of its own; a question outside the template is counted apart."""
    assert question_object("Is there a dining table in the image?") == "dining table"
    assert question_object("is there an apple in the picture") == "apple"
    assert question_object("What colour is the cat?") is None
    questions = ["Is there a dining table in the image?", "Is there a cat in the image?", "Is there a tab in the image?",
                 "Is there a dog in the image?", "How many cats are there?"]
    tags = [["wooden dining table", "chair"], ["cats"], ["tablet"], [], ["cat"]]
    out = pope_by_tags(["Yes", "No", "No", "Yes", "Yes"], ["yes", "yes", "no", "no", "yes"], questions, tags)
    assert out["unmatched"] == 1
    assert (out["named"]["n"], out["named"]["tp"], out["named"]["fn"], out["named"]["recall"]) == (2, 1, 1, 0.5)
    assert (out["unnamed"]["n"], out["unnamed"]["tn"], out["unnamed"]["fp"]) == (2, 1, 1)
    assert pope_by_tags(["Yes"], ["yes"], questions[:1], [[]])["named"] == {"n": 0}
    with pytest.raises(ValueError, match="2 answers, 1 labels, 1 questions and 1 tag lists"):
        pope_by_tags(["Yes", "No"], ["yes"], questions[:1], [[]])


def test_pope_rejects_bad_input_naming_it() -> None:
    with pytest.raises(ValueError, match="3 answers for 2 labels"):
        pope_metrics(["yes"] * 3, ["yes", "no"])
    with pytest.raises(ValueError, match="'maybe'"):
        pope_metrics(["yes", "no"], ["yes", "maybe"])
    with pytest.raises(ValueError, match="question_id 2"):
        score_pope_rows([{"question_id": 1, "label": "yes"}, {"question_id": 2, "label": "no"}], {1: "Yes"})
    with pytest.raises(ValueError, match="lacks f1"):
        pope_summary({"random": {"accuracy": 1.0}})


def test_pope_on_the_world_with_labels_as_answers(world: World) -> None:
    for part in ("id", "ood"):
        splits = load_pope_splits(world.root / "eval" / "pope" / part)
        assert set(splits) == set(POPE_SPLITS)
        per_split = {}
        for split, rows in splits.items():
            perfect = score_pope_rows(rows, {r["question_id"]: ("Yes, there is." if r["label"] == "yes" else
                                                                "No, there is not.") for r in rows})
            assert perfect["f1"] == 1.0 and perfect["accuracy"] == 1.0 and perfect["yes_ratio"] == 0.5
            per_split[split] = perfect
            flipped = pope_metrics(["no" if r["label"] == "yes" else "yes" for r in rows], [r["label"] for r in rows])
            assert flipped["accuracy"] == 0.0 and flipped["f1"] == 0.0
        assert pope_summary(per_split)["f1"] == 1.0


# ------------------------------------------------------------------------------------------ FINER

LABELS = {"superordinate": "fruit", "coarse": "berry", "fine": "zedul"}
RECORD = {"id": "0", "basic-level-lbl": "fruit", "coarse-level-lbl": "berry", "fine-level-lbl": "zedul"}


def test_finer_normalisation() -> None:
    assert answer_tokens("Answer: The Zedul.") == ["zedul"]
    assert answer_tokens("Attributes: a red, striped shape. Answer: An  ZEDUL!") == ["zedul"]
    assert normalize("  The  Apple,the pear;  a-b ") == "apple pear b"
    assert answer_tokens("It is a zedul") == ["it", "is", "zedul"]   # no "Answer:": the whole text


@pytest.mark.parametrize(("prediction", "want"), [
    ("Answer: The Zedul.", (True, True, True)),
    ("zeduls", (True, True, True)),                 # plural accepted
    ("It is a berry.", (True, True, False)),        # coarse answer: wrong at fine level
    ("Some berrys.", (True, True, False)),           # the world's plural of a coarse label
    ("A fruit.", (True, False, False)),
    ("quarei", (False, False, False)),              # a sibling's name is no hit at any level
    ("", (False, False, False)),
])
def test_finer_level_acceptance(prediction: str, want: tuple[bool, bool, bool]) -> None:
    hits = level_hits(prediction, LABELS)
    assert (hits["superordinate"], hits["coarse"], hits["fine"]) == want


def test_finer_gold_beyond_the_window_is_not_counted() -> None:
    assert level_hits(" ".join(["word"] * (EM_WINDOW - 1) + ["zedul"]), LABELS)["fine"]
    assert not level_hits(" ".join(["word"] * EM_WINDOW + ["zedul"]), LABELS)["fine"]
    # articles and punctuation are gone before counting
    assert level_hits(" ".join(["the"] * 30 + ["zedul"]), LABELS)["fine"]


def test_finer_tag_quality_counts_whole_word_names_of_the_gold_class() -> None:
    other = dict(RECORD, id="1", **{"fine-level-lbl": ["kraidroul", "kraidroul fruit"]})   # FINER lists labels
    tags = [["checkered zedul", "zeduls", "zedulberry", "voveisur"],   # 2 of 4 whole-word (plural counts): no majority
            ["voveisur", "large kraidroul", "kraidroul"],              # not first; 2 of 3: majority
            []]                                                         # no tags: a miss everywhere
    q = tag_quality(tags, [RECORD, other, dict(RECORD, id="2")])
    assert q == {"gold_in_tags": round(2 / 3, 4), "gold_majority": round(1 / 3, 4), "gold_first": round(1 / 3, 4),
                 "n": 3, "untagged": 1}
    assert tag_quality(tags, [RECORD, other, dict(RECORD, id="2")], top=2)["gold_majority"] == round(1 / 3, 4)   # 2 of 2, 1 of 2, none
    with pytest.raises(ValueError, match="2 tag lists for 1 FINER records"):
        tag_quality([[], []], [RECORD])


def test_finer_token_f1() -> None:
    assert token_f1("Answer: zedul", "zedul") == 1.0
    assert token_f1("Answer: zedul berry", "zedul") == pytest.approx(2 / 3)
    assert token_f1("berry", "zedul") == 0.0
    assert token_f1("", "zedul") == 0.0


def test_finer_metrics_hand_computed() -> None:
    preds = ["Answer: The Zedul.", "a berry", "", "quarei"]
    m = finer_metrics(preds, [RECORD] * 4)
    assert m == {"superordinate_em": 0.5, "coarse_em": 0.5, "fine_em": 0.25,
                 "superordinate_em_word": 0.5, "coarse_em_word": 0.5, "fine_em_word": 0.25,
                 "token_f1": 0.25, "n": 4, "empty": 1}


# FINER's own rule, llava/eval/eval_fgvc.py of wjdghks950/Finer: remove_ans_prefix keeps the text after
# the FIRST "Answer:" (exact case) stripped and without "</s>"; normalize_answer lower-cases, DELETES
# punctuation, replaces a/an/the by a space and collapses spaces; exact_match_score is 1 when the
# normalised gold is a substring of the first 20 normalised answer words joined by spaces (or equals the
# whole answer); a level takes the max over its labels: [basic] + coarse list + fine list for
# high_coarse, coarse list + fine list for coarse, the fine list for fine.
FINER_RECORD = {"id": "7", "basic-level-lbl": "Birds", "coarse-level-lbl": ["Owl"],
                "fine-level-lbl": ["Snowy Owl", "Bubo scandiacus"]}


def test_finer_rule_answer_extraction_and_normalisation() -> None:
    assert finer_answer("Attributes: white. Answer: Snowy Owl</s>") == "Snowy Owl"
    assert finer_answer("Answer: Snowy Owl. Answer: Barn Owl") == "Snowy Owl. Answer: Barn Owl"   # the first one
    assert finer_answer("answer: Snowy Owl") == "answer: Snowy Owl"        # case-sensitive: no prefix found
    assert finer_answer("  Snowy Owl \n") == "Snowy Owl"
    assert finer_normalize("The Black-capped Chickadee!") == "blackcapped chickadee"   # punctuation deleted
    assert finer_normalize("An owl, a  bird") == "owl bird"
    assert normalize("The Black-capped Chickadee!") == "black capped chickadee"       # whole-word: a space


@pytest.mark.parametrize(("prediction", "official", "word"), [
    ("Answer: Snowy Owl", (True, True, True), (True, True, True)),
    ("Answer: It is a snowy owl.", (True, True, True), (True, True, True)),
    ("Bubo scandiacus", (True, True, True), (True, True, True)),             # any label of the list
    ("Answer: an owl", (True, True, False), (True, True, False)),            # coarse label: not fine
    ("Answer: birds", (True, False, False), (True, False, False)),
    ("Answer: bird", (False, False, False), (False, False, False)),          # "birds" is not inside "bird"
    ("Answer: a bowl", (True, True, False), (False, False, False)),          # substring: "owl" in "bowl"
    ("Answer: snowyowl", (True, True, False), (False, False, False)),        # "owl" in "snowyowl"
    ("Answer: snowy-owl", (True, True, False), (True, True, True)),          # deleted "-" joins the words
    ("Answer: Snowy Owl. Answer: Barn Owl", (True, True, True), (True, True, False)),  # first vs last
    ("Answer: Barn Owl. Answer: Snowy Owl", (True, True, True), (True, True, True)),   # both within 20 words
    ("", (False, False, False), (False, False, False)),
    ("Answer:", (False, False, False), (False, False, False)),
])
def test_finer_rule_against_the_whole_word_rule(prediction: str, official: tuple[bool, bool, bool],
                                                word: tuple[bool, bool, bool]) -> None:
    labels = {"superordinate": "Birds", "coarse": ["Owl"], "fine": ["Snowy Owl", "Bubo scandiacus"]}
    hits, whole = finer_level_hits(prediction, labels), level_hits(prediction, labels)
    assert tuple(hits[lvl] for lvl in ("superordinate", "coarse", "fine")) == official
    assert tuple(whole[lvl] for lvl in ("superordinate", "coarse", "fine")) == word


def test_finer_rule_window_counts_words_after_deletion() -> None:
    labels = {"superordinate": "Birds", "coarse": ["Owl"], "fine": ["Snowy Owl"]}
    assert finer_level_hits("Answer: " + "word " * 18 + "snowy owl", labels)["fine"]       # words 19-20
    assert not finer_level_hits("Answer: " + "word " * 19 + "snowy owl", labels)["fine"]   # "owl" is word 21
    assert finer_level_hits("Answer: " + "the " * 30 + "snowy owl", labels)["fine"]        # articles are gone
    assert finer_level_hits("Answer: " + "- " * 30 + "snowy owl", labels)["fine"]          # so is punctuation


def test_finer_metrics_with_list_labels() -> None:
    preds = ["Answer: Snowy Owl", "Answer: a bowl", "Answer: snowy-owl", "", "Answer: Birds"]
    m = finer_metrics(preds, [FINER_RECORD] * 5)
    assert (m["superordinate_em"], m["coarse_em"], m["fine_em"]) == (0.8, 0.6, 0.2)
    assert (m["superordinate_em_word"], m["coarse_em_word"], m["fine_em_word"]) == (0.6, 0.4, 0.4)
    assert m["empty"] == 1 and m["n"] == 5
    assert m["token_f1"] == pytest.approx((1.0 + 0.0 + 1.0 + 0.0 + 0.0) / 5)   # best over the fine labels


def test_finer_rejects_bad_input_naming_it() -> None:
    with pytest.raises(ValueError, match="2 predictions for 1"):
        finer_metrics(["a", "b"], [RECORD])
    with pytest.raises(ValueError, match="fine-level-lbl"):
        finer_metrics(["a"], [{**RECORD, "fine-level-lbl": ""}])
    for bad in ([], [""], ["ok", 3], 3, None, "!!"):
        with pytest.raises(ValueError, match="coarse-level-lbl"):
            finer_metrics(["a"], [{**RECORD, "coarse-level-lbl": bad}])
    with pytest.raises(ValueError, match="superordinate"):
        attrseek_prompts(" ")


def test_finer_prompts() -> None:
    turn1, turn2 = attrseek_prompts("fruit")
    assert "fruit" in turn1 and "Attributes:" in turn1 and "Answer:" not in turn1
    assert "fruit" in turn2 and "Answer:" in turn2
    assert "fruit" in direct_prompt("fruit")


def test_finer_questions_per_level_follow_finer_wording() -> None:
    """llava/serve/prompts.py of FINER (CUB-200 / NAbirds wording); cli.py with --use_gold_coarse names
    the gold basic-level label in the coarse question and the gold coarse label in the fine question."""
    q = finer_questions(FINER_RECORD, ["Birds", "Insects"])
    assert q["superordinate"] == ("What is the name of the organism that appears in this image? Provide your answer "
                                  "after \"Answer:\" from one of the following categories: ['Birds', 'Insects'].")
    assert q["coarse"] == ("What is the name of the Birds that appears in this image? For example, if it's a picture "
                           "of a Owl Parrot, give a coarse-grained label for the image 'Parrot'.\n"
                           "Provide your answer after \"Answer:\".")
    assert q["fine"].startswith("What is the name of the Owl that appears in this image?")
    assert "fine-grained label for the image 'Owl Parrot'" in q["fine"]
    with pytest.raises(ValueError, match="coarse-level"):
        finer_questions({**FINER_RECORD, "coarse-level-lbl": []}, ["Birds"])
    with pytest.raises(ValueError, match="categories"):
        finer_questions(FINER_RECORD, [])


def test_finer_attrseek_turns_follow_finer_wording() -> None:
    """attr_seek then attr_seek_fine of FINER's prompts.py, the gold coarse label as the concept."""
    from tuna.eval.finer import finer_attrseek_questions

    t1, t2 = finer_attrseek_questions(FINER_RECORD)
    assert t1 == ("What kind of external descriptive attributes do you see from the Owl in this image? Provide the set "
                  "of detailed physical attributes after \"Attributes:\".")
    assert t2 == ("Now, tell me what kind of Owl it is. For example, if it's a picture of a bengal tiger, give a "
                  "fine-grained label for the image 'Bengal Tiger' or use its binomial nomenclature 'Panthera tigris "
                  "tigris'.\nProvide your answer after \"Answer:\".")


def test_finer_on_the_world_with_labels_as_predictions(world: World) -> None:
    for split in ("id", "ood", "b"):
        records = load_finer(world.root / "eval" / "finer" / split / "finer.jsonl")
        perfect = finer_metrics([f"Answer: {r['fine-level-lbl']}" for r in records], records)
        assert perfect == {"superordinate_em": 1.0, "coarse_em": 1.0, "fine_em": 1.0, "superordinate_em_word": 1.0,
                           "coarse_em_word": 1.0, "fine_em_word": 1.0, "token_f1": 1.0, "n": len(records), "empty": 0}
        coarse = finer_metrics([r["coarse-level-lbl"] for r in records], records)
        assert (coarse["superordinate_em_word"], coarse["coarse_em_word"], coarse["fine_em_word"]) == (1.0, 1.0, 0.0)
        assert (coarse["superordinate_em"], coarse["coarse_em"]) == (1.0, 1.0)


# -------------------------------------------------------------------------------------------- MME


def _mme(task: str, image: str, answer: str) -> MmeItem:
    return MmeItem(task=task, image=Path(image), question="Is there a zedul in this image?", answer=answer)


def test_mme_hand_computed() -> None:
    items = [_mme("existence", "a.png", "Yes"), _mme("existence", "a.png", "No"),
             _mme("existence", "b.png", "Yes"), _mme("existence", "b.png", "No"),
             _mme("count", "c.png", "Yes"), _mme("count", "c.png", "No")]
    preds = ["Yes", "No, there is not.", "Yes.", "", "yes", "no"]   # b.png: one of two wrong (empty)
    m = mme_metrics(items, preds)
    ex, co = m["tasks"]["existence"], m["tasks"]["count"]
    assert (ex["accuracy"], ex["accuracy_plus"], ex["images"], ex["unparsed"]) == (0.75, 0.5, 2, 1)
    assert ex["score"] == pytest.approx(125.0)
    assert (co["accuracy"], co["accuracy_plus"], co["score"]) == (1.0, 1.0, 200.0)
    assert m["total"] == pytest.approx(325.0) and m["n"] == 6 and m["unparsed"] == 1
    assert m["groups"] == {"perception": pytest.approx(325.0)}


def test_mme_reports_perception_and_cognition_apart() -> None:
    """MME's calculation.py prints a perception total (10 subtasks) and a cognition total (4) separately."""
    items = [_mme(task, f"{task}.png", a) for task in ("OCR", "code_reasoning", "zedul_task") for a in ("Yes", "No")]
    m = mme_metrics(items, ["Yes", "No", "Yes", "Yes", "No", "No"])
    assert m["groups"] == {"perception": 200.0, "cognition": 50.0, "other": 50.0}


# MME's eval_tool/calculation.py (MME release, BradyFU/Awesome-Multimodal-Large-Language-Models, branch
# Evaluation, tools/eval_tool.zip), parse_pred_ans on the lower-cased answer: exactly "yes"/"no" is itself;
# else "yes" within the first 4 characters -> "yes", else "no" within them -> "no", else "other" (wrong).
@pytest.mark.parametrize(("text", "want"), [
    ("Yes", "yes"), ("No", "no"), ("NO", "no"), ("YES", "yes"),
    ("No.", "no"), ("Yes.", "yes"),
    ("yes, there is a zedul", "yes"),
    ("No, there is no zedul", "no"),
    ("Not sure", "no"),                  # "not " holds "no" (POPE's rule reads "yes")
    ("Nope", "no"),                      # POPE: "yes"
    ("None", "no"), ("Know", "no"),      # the letters "no" within the first four characters
    ("Eyes", "yes"),                     # "yes" within "eyes"
    ("Noyes", "no"),                     # "noye": no "yes" in the first four, then "no"
    ("Yes\nNo", "yes"),                  # "yes\n"
    ("There is no zedul.", "other"),     # "ther": POPE reads "no"
    ("I don't know", "other"),
    ("y", "other"), ("n", "other"),      # lmms-eval reads "y" / "n"; calculation.py does not
    ("", "other"),                       # POPE's script: "yes"; ours for POPE: unparsed
    (" yes", "yes"),                     # " yes" still holds "yes"
    ("  yes", "other"),                  # two spaces push it past the fourth character
    ("   no", "other"),
    ("yes\n", "yes"),                    # a line as readlines() gives it
])
def test_mme_reads_answers_as_calculation_py(text: str, want: str) -> None:
    assert read_mme_answer(text) == want


def test_mme_metrics_strip_then_read_and_count_other_as_wrong() -> None:
    """The generation is stripped first (LLaVA's model_vqa_loader writes outputs.strip()), so "  yes"
    is a yes there; "Nope" and "Not sure" are "no"; "" and "There is no zedul." are "other": wrong."""
    items = [_mme("existence", "a.png", "Yes"), _mme("existence", "a.png", "No"),
             _mme("existence", "b.png", "Yes"), _mme("existence", "b.png", "No"),
             _mme("existence", "c.png", "Yes"), _mme("existence", "c.png", "No")]
    preds = ["  yes", "Nope", "NO", "Not sure", "", "There is no zedul."]
    m = mme_metrics(items, preds)["tasks"]["existence"]
    # a.png: both right; b.png: "NO" to a Yes question is wrong, "Not sure" right; c.png: both "other".
    assert (m["accuracy"], m["accuracy_plus"], m["unparsed"]) == (pytest.approx(3 / 6), pytest.approx(1 / 3), 2)
    assert m["score"] == pytest.approx(50.0 + 100 / 3)


def test_mme_needs_two_questions_per_image() -> None:
    """calculation.py takes a subtask's lines two by two (one image) and asserts each chunk has two."""
    three = [_mme("count", "a.png", "Yes"), _mme("count", "a.png", "No"), _mme("count", "a.png", "No")]
    with pytest.raises(ValueError, match="a.png has 3 question"):
        mme_metrics(three, ["yes", "no", "no"])
    with pytest.raises(ValueError, match="b.png has 1 question"):
        mme_metrics([_mme("count", "b.png", "Yes")], ["yes"])
    with pytest.raises(TypeError, match="must be a str"):
        read_mme_answer(None)  # type: ignore[arg-type]


def test_mme_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="'Maybe'"):
        mme_metrics([_mme("existence", "a.png", "Maybe")], ["Yes"])
    with pytest.raises(ValueError, match="1 predictions for 2"):
        mme_metrics([_mme("count", "a.png", "Yes"), _mme("count", "a.png", "No")], ["Yes"])


def test_mme_on_the_world_with_answers_as_predictions(world: World) -> None:
    for part in ("id", "ood"):
        items = load_mme(world.root / "eval" / "mme" / part)
        m = mme_metrics(items, [f"{it.answer}." for it in items])
        assert set(m["tasks"]) == set(MME_TASKS)
        assert all(t["score"] == 200.0 and t["questions"] == 2 * t["images"] for t in m["tasks"].values())
        assert m["total"] == 200.0 * len(MME_TASKS)
        wrong = mme_metrics(items, ["No" if it.answer == "Yes" else "Yes" for it in items])
        assert wrong["total"] == 0.0


# ------------------------------------------------------------------------------------------ CHAIR

VOCAB = ["zedul", "quarei", "brailusil", "plotutroux"]


def test_chair_mentions_count_singular_plural_and_every_occurrence() -> None:
    index = mention_index(VOCAB)
    assert object_mentions("Plotutrouxes, a zedul and another ZEDUL; zedulx is no word.", index) == [
        "plotutroux", "zedul", "zedul"]
    assert object_mentions("", index) == []


def test_chair_hand_computed() -> None:
    gt = {"1.png": ["zedul", "quarei"], "2.png": ["brailusil"], "3.png": ["zedul"]}
    caps = {"1.png": "Two zeduls and a quarei.",                       # 2 mentions, none hallucinated
            "2.png": "A brailusil next to a zedul and a plotutroux.",  # 3 mentions, 2 hallucinated
            "3.png": "  "}                                             # nothing mentioned, nothing recalled
    m = chair_metrics(caps, gt, VOCAB)
    assert m["chair_i"] == pytest.approx(2 / 5)
    assert m["chair_s"] == pytest.approx(1 / 3)
    assert m["recall"] == pytest.approx(3 / 4)
    assert (m["n"], m["mentions"], m["hallucinated"], m["empty"]) == (3, 5, 2, 1)


def test_chair_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="'9.png'"):
        chair_metrics({"9.png": "a zedul"}, {"1.png": ["zedul"]}, VOCAB)
    with pytest.raises(ValueError, match="gizmo"):
        chair_metrics({"1.png": "a zedul"}, {"1.png": ["gizmo"]}, VOCAB)


def test_chair_on_the_world_with_ground_truth_captions(world: World) -> None:
    vocab = chair_vocabulary(world.a, world.b)
    for part in ("id", "ood"):
        folder = world.root / "eval" / "captions" / part
        gt = coco_objects_by_image(load_coco(folder / "instances.json"))
        exact = chair_metrics({img: "There are " + " and ".join(objs) + "." for img, objs in gt.items()}, gt, vocab)
        assert (exact["chair_i"], exact["chair_s"], exact["recall"]) == (0.0, 0.0, 1.0)
        # the world's own reference captions describe only what is there
        refs = load_coco(folder / "captions.json")
        files = {im["id"]: im["file_name"] for im in refs["images"]}
        first = {}
        for ann in refs["annotations"]:
            first.setdefault(files[ann["image_id"]], ann["caption"])
        assert chair_metrics(first, gt, vocab)["chair_i"] == 0.0
        # naming one absent class in every caption hallucinates in each of them
        absent = {img: next(v for v in vocab if v not in objs) for img, objs in gt.items()}
        bad = chair_metrics({img: f"A {absent[img]}." for img in gt}, gt, vocab)
        assert bad["chair_s"] == 1.0 and bad["chair_i"] == 1.0 and bad["recall"] == 0.0
