"""The parser on good, malformed, truncated and wrong-grade outputs; it never raises."""
from __future__ import annotations

import random

import pytest

from lrkd.teacher.parse import PARSE_ERRORS, match_grade, parse_multi, parse_single
from lrkd.teacher.prompts import Perspective, format_multi_completion, format_single_completion
from tests.teacher import GRADES

PERSPECTIVES = [Perspective("user_intent", "User intent", "i1"), Perspective("structured_analysis",
                "Structured analysis", "i2"), Perspective("business_rules", "Business rules", "i3")]


@pytest.mark.parametrize("text, rationale, label", [
    ("The shopper wants a cable; this is one.\nLabel: perfect", "The shopper wants a cable; this is one.", "perfect"),
    ("Brand matches.\n**Label:** Perfect.", "Brand matches.", "perfect"),
    ("Brand matches.\nlabel : GOOD", "Brand matches.", "good"),             # what an uncased tokenizer decodes
    ("Reasoning: close but a different size.\nLabel: Fair match", "close but a different size.", "fair"),
    ("An accessory.\nLabel: `poor`\nThe end. Label: perfect", "An accessory.", "poor"),  # the first label decides
    ("Same model.\n**Label:**\nGood", "Same model.", "good"),                # grade on the next line
    ("Multi\nline reasoning.\n\nLabel: <fair>", "Multi\nline reasoning.", "fair"),
])
def test_good_outputs(text, rationale, label):
    parsed = parse_single(text, GRADES)
    assert (parsed.rationale, parsed.label, parsed.error) == (rationale, label, None)


@pytest.mark.parametrize("text, error", [
    ("", "empty_output"), ("   \n ", "empty_output"), (None, "empty_output"),
    ("The product is a laptop bag and the shopper wants", "no_label"),          # truncated mid-sentence
    ("It is a bag.\nLabel:", "empty_label"),                                    # truncated after the prefix
    ("It is a bag.\nLabel: ** ", "empty_label"),
    ("It is a bag.\nLabel: perf", "unknown_grade"),                             # truncated inside the grade
    ("It is a bag.\nLabel: excellent", "unknown_grade"),                        # not a grade
    ("It is a bag.\nLabel: not perfect", "unknown_grade"),
    ("It is a bag.\nLabel: perfection", "unknown_grade"),
    ("Label: perfect", "empty_rationale"),
    ("**\nLabel: good", "empty_rationale"),
    ("Labels: perfect and good", "no_label"),
])
def test_bad_outputs_give_an_error_and_no_label(text, error):
    parsed = parse_single(text, GRADES)
    assert parsed.label is None and parsed.error == error and not parsed.ok


def test_wrong_but_valid_grade_parses():
    """A grade that is not the gold one is still a parse: rejection is the filter's job, not the parser's."""
    assert parse_single("Seems unrelated.\nLabel: poor", GRADES).label == "poor"


def test_match_grade_prefers_the_longest_grade_and_keeps_the_configured_spelling():
    grades = ["Exact", "Exact_match_plus", "Irrelevant"]
    assert match_grade("exact match plus!", grades) == "Exact_match_plus"
    assert match_grade("**EXACT**", grades) == "Exact"
    assert match_grade("inexact", grades) is None


def test_single_round_trip():
    text = format_single_completion("  Fits the need.\n", "good")
    assert text == "Fits the need.\nLabel: good"
    assert parse_single(text, GRADES) == parse_single("Fits the need.\nLabel: good", GRADES)
    assert parse_single(text, GRADES).rationale == "Fits the need."


def test_multi_round_trip_and_any_order():
    rationales = {"user_intent": "Wants a cable.\nThis is one.", "structured_analysis": "USB-C, 2 m.",
                  "business_rules": "Not an accessory."}
    text = format_multi_completion(rationales, PERSPECTIVES, "perfect")
    assert text == ("User intent: Wants a cable. This is one.\nStructured analysis: USB-C, 2 m.\n"
                    "Business rules: Not an accessory.\nLabel: perfect")
    parsed = parse_multi(text, PERSPECTIVES, GRADES)
    assert parsed.error is None and parsed.label == "perfect"
    assert parsed.rationales == {"user_intent": "Wants a cable. This is one.", "structured_analysis": "USB-C, 2 m.",
                                 "business_rules": "Not an accessory."}
    shuffled = "**business rules:** ok rule.\nuser intent : wants it.\nStructured analysis: same.\nlabel : good"
    parsed = parse_multi(shuffled, PERSPECTIVES, GRADES)
    assert parsed.label == "good"
    assert list(parsed.rationales) == ["user_intent", "structured_analysis", "business_rules"]
    assert parsed.rationales["business_rules"] == "ok rule." and parsed.rationales["user_intent"] == "wants it."


@pytest.mark.parametrize("text, error, found", [
    ("User intent: a.\nStructured analysis: b.\nLabel: good", "missing_perspective", 2),
    ("User intent: a.\nStructured analysis: b.\nBusiness rules: c.", "no_label", 3),          # truncated
    ("User intent: a.\nStructured analysis: b.\nBusiness rules:", "no_label", 3),
    ("User intent: a.\nStructured analysis:\nBusiness rules: c.\nLabel: fair", "empty_rationale", 3),
    ("User intent: a.\nStructured analysis: b.\nBusiness rules: c.\nLabel: great", "unknown_grade", 3),
    ("Everything fits.\nLabel: perfect", "missing_perspective", 0),
])
def test_multi_bad_outputs(text, error, found):
    parsed = parse_multi(text, PERSPECTIVES, GRADES)
    assert parsed.label is None and parsed.error == error and len(parsed.rationales) == found


def test_a_title_inside_a_line_does_not_start_a_section():
    text = "User intent: the user intent: a cable.\nStructured analysis: b.\nBusiness rules: c.\nLabel: good"
    parsed = parse_multi(text, PERSPECTIVES, GRADES)
    assert parsed.rationales["user_intent"] == "the user intent: a cable."


def test_never_raises_and_error_iff_no_label():
    rng = random.Random(0)
    pieces = ["Label:", "label :", "**", "perfect", "good", "Fair.", "poor", "\n", " ", "User intent:", "x",
              "Business rules:", "Structured analysis:", "\u00e9", ":", "`", "<", "Label"]
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        for parsed in (parse_single(text, GRADES), parse_multi(text, PERSPECTIVES, GRADES)):
            assert (parsed.error is None) == (parsed.label in GRADES)
            assert parsed.error is None or parsed.error in PARSE_ERRORS
