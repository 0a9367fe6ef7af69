"""benchmarks/demo_failures.py sorts wrong answers by what they say, with the tasks' own scorers."""

from __future__ import annotations

from benchmarks.demo_failures import choice_reading, classify, step_reading, table
from fast_dvlm.data import get_task

MAP_QUESTION = "Which city is in the red region? A. Rome B. Lima C. Cairo"


def test_choice_answers_are_read_for_their_content_and_their_letter():
    assert choice_reading(MAP_QUESTION, "The red region is Lima, option B.", "B") == (True, True)
    # the right city under another option's letter: a lookup slip inside the question
    assert choice_reading(MAP_QUESTION, "The red region is Lima, option A.", "B") == (True, False)
    assert choice_reading(MAP_QUESTION, "The red region is Cairo, option C.", "B") == (False, True)
    assert choice_reading(MAP_QUESTION, "The red region is Oslo, option A.", "B") is None  # not an option
    counting = "How many stars are in the image? A. 2 B. 3 C. 4 D. 5"
    assert choice_reading(counting, "There are 4, so the answer is option C.", "C") == (True, True)
    assert choice_reading(counting, "There are 4.", "C") is None  # no letter


def test_a_wrong_answer_that_answers_another_question_counts_as_bound_wrong():
    chart, others = get_task("chart"), {"3", "7"}  # the other bars' values
    question = "What is the value of the red bar?"
    assert classify(chart, question, "The red bar has a value of 7.", "5", others) == {
        "items": 1, "right": 0, "bound wrong": 1}  # fmt: skip
    assert classify(chart, question, "The red bar has a value of 9.", "5", others)["bound wrong"] == 0
    assert classify(chart, question, "The red bar has a value of 5.", "5", others) == {"items": 1, "right": 1}
    # one question per image: nothing to be bound to, so no such count at all
    assert "bound wrong" not in classify(get_task("steps"), "q", "Final answer: 12", "13", set())
    spatial = get_task("spatial")
    row = classify(spatial, "Where is the red star relative to the blue star?",
                   "The red star is right of the blue star.", "left", {"right"})  # fmt: skip
    assert row["bound wrong"] == 1


def test_choice_and_presence_rows_and_the_table():
    row = classify(get_task("map"), MAP_QUESTION, "The red region is Lima, option A.", "B", {"A", "C"})
    assert row == {"items": 1, "right": 0, "stated one option": 1, "content right": 1, "letter agrees": 0}
    said = classify(get_task("presence"), "Is there a red star in the image?", "Yes, there is a red star.",
                    "no", set())  # fmt: skip
    assert said == {"items": 1, "right": 0, "said yes": 1}
    text = table({"map": row, "presence": said})
    assert (
        "| map | 0% | - | 100% | 0% | - | - | - |" in text
        and "| presence | 0% | - | - | - | 100% | - | - |" in text
    )


STEPS_REFERENCE = (
    "Step 1: the numbers in the boxes, from left to right, are 2, 7 and 8. Step 2: add the first two "
    "numbers, 2 + 7 = 9. Step 3: add the third number, 9 + 8 = 17. Final answer: 17."
)


def test_a_steps_answer_is_read_for_its_numbers_and_its_sums():
    steps = get_task("steps")
    misread = STEPS_REFERENCE.replace("2, 7 and 8", "2, 5 and 8").replace("2 + 7 = 9", "2 + 5 = 7")
    misread = misread.replace("9 + 8 = 17", "7 + 8 = 15").replace("answer: 17", "answer: 15")
    row = classify(steps, "q", misread, "17", set(), STEPS_REFERENCE)
    assert row == {"items": 1, "right": 0, "numbers": 3, "numbers placed": 2, "sums follow": 1}
    added_wrong = STEPS_REFERENCE.replace("9 + 8 = 17", "9 + 8 = 16").replace("answer: 17", "answer: 16")
    assert step_reading(added_wrong, STEPS_REFERENCE) == (3, False)
    assert step_reading(STEPS_REFERENCE.replace("answer: 17", "answer: 18"), STEPS_REFERENCE) == (3, False)
    assert step_reading("Final answer: 17.", STEPS_REFERENCE) is None
    text = table({"steps": row})
    assert "| steps | 0% | - | - | - | - | 67% | 100% |" in text
