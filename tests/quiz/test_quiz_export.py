"""LMS exports: GIFT parsed back with an independent parser, QTI 1.2 zip structure."""

import re
import zipfile
from xml.etree import ElementTree as ET

import pytest

from optcourse.quiz import bank as bank_module
from optcourse.quiz.__main__ import main
from optcourse.quiz.export import export_gift, export_qti, gift_escape, question_to_gift
from optcourse.quiz.testwise import export_order

QTI = "{http://www.imsglobal.org/xsd/ims_qtiasiv1p2}"
MANIFEST = "{http://www.imsglobal.org/xsd/imsccv1p1/imscp_v1p1}"


@pytest.fixture(scope="module")
def questions():
    return bank_module.load_bank()


# --- a small GIFT reader, written from the format description, not from the exporter ---

def split_unescaped(text, marker):
    """Split at occurrences of `marker` not preceded by a backslash escape."""
    parts, current, i = [], "", 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            current += text[i:i + 2]
            i += 2
        elif text.startswith(marker, i):
            parts.append(current)
            current, i = "", i + len(marker)
        else:
            current += text[i]
            i += 1
    return parts + [current]


def gift_unescape(text):
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text.strip())


def parse_gift(text):
    lines = [line for line in text.splitlines() if not line.startswith(("//", "$CATEGORY"))]
    parsed = []
    for block in "\n".join(lines).split("\n\n"):
        block = block.strip()
        if not block:
            continue
        _, title, rest = split_unescaped(block, "::")
        question_text, answers = split_unescaped(rest, "{")
        answers, trailing = split_unescaped(answers, "}")
        assert trailing.strip() == ""
        answers, *general = split_unescaped(answers, "####")
        answers = answers.strip()
        entry = {"title": gift_unescape(title), "text": gift_unescape(re.sub(r"^\[\w+\]", "", question_text)),
                 "feedback": gift_unescape(general[0]) if general else None}
        if answers in ("TRUE", "FALSE", "T", "F"):
            entry.update(kind="truefalse", answer=answers.startswith("T"))
        elif answers.startswith("#"):
            value, margin = answers[1:].split(":")
            entry.update(kind="numeric", answer=float(value), margin=float(margin))
        else:
            options = []
            for token in re.split(r"(?<!\\)(?=[=~])", answers):
                token = token.strip()
                if not token:
                    continue
                marker, body = token[0], token[1:]
                weight = 100.0 if marker == "=" else 0.0
                match = re.match(r"%(-?[\d.]+)%", body)
                if match:
                    weight, body = float(match.group(1)), body[match.end():]
                options.append((gift_unescape(split_unescaped(body, "#")[0]), weight))
            entry.update(kind="choice", options=options)
        parsed.append(entry)
    return parsed


def test_gift_round_trip_preserves_questions_and_answers(questions, tmp_path):
    parsed = parse_gift(export_gift(questions, tmp_path / "bank.gift").read_text(encoding="utf-8"))
    assert len(parsed) == len(questions)
    for question, entry in zip(questions, parsed):
        assert entry["title"] == question["id"]
        assert entry["feedback"] == question["explanation"]
        if question["kind"] == "truefalse":
            assert entry["kind"] == "truefalse" and entry["answer"] == question["answer"]
        elif question["kind"] == "numeric":
            answer = bank_module.numeric_answer(question)
            assert entry["answer"] == pytest.approx(answer, rel=1e-8)
            tolerance = question["tolerance"]
            margin = tolerance.get("abs", tolerance.get("rel", 0) * abs(answer))
            assert entry["margin"] == pytest.approx(margin, rel=1e-8, abs=1e-12)
            assert entry["text"].startswith(bank_module.render_prompt(question))
        else:
            assert entry["text"] == question["prompt"]
            texts = [c["text"] for c in export_order(question)]
            assert [text for text, _ in entry["options"]] == texts
            correct = {c["text"] for c in question["choices"] if c.get("correct")}
            if question["kind"] == "single":
                assert [text for text, weight in entry["options"] if weight == 100] == [next(iter(correct))]
            else:
                positive = {text for text, weight in entry["options"] if weight > 0}
                assert positive == correct
                assert sum(w for _, w in entry["options"] if w > 0) == pytest.approx(100, abs=0.01)
                assert all(w == pytest.approx(-100 / len(correct), abs=0.01)
                           for t, w in entry["options"] if t not in correct)


def test_gift_escapes_every_special_character():
    nasty = "a ~ b = c # d { e } f : g \\ h\nnext line"
    question = {"id": "l1-nasty", "lecture": 1, "kind": "single", "points": 1, "prompt": nasty,
                "explanation": "why: {x} = ~y # z", "objective": "escape all the things",
                "choices": [{"text": "=~#{}:", "correct": True}, {"text": "plain"}, {"text": "a:b"}]}
    gift = question_to_gift(question)
    assert gift_escape(nasty) == r"a \~ b \= c \# d \{ e \} f \: g \\ h\nnext line"
    assert "\t=\\=\\~\\#\\{\\}\\:\n" in gift  # the correct option "=~#{}:" fully escaped
    entry = parse_gift(gift)[0]
    assert entry["text"] == nasty
    assert entry["feedback"] == "why: {x} = ~y # z"
    assert ("=~#{}:", 100.0) in entry["options"]
    assert gift_escape("50:50") == "50\\:50"


def test_qti_zip_has_manifest_and_well_formed_assessment(questions, tmp_path):
    path = export_qti(questions, tmp_path / "bank.zip")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert "imsmanifest.xml" in names
        manifest = ET.fromstring(archive.read("imsmanifest.xml"))
        assert manifest.tag == f"{MANIFEST}manifest"
        resource = manifest.find(f"{MANIFEST}resources/{MANIFEST}resource")
        assert resource.get("type") == "imsqti_xmlv1p2"
        href = resource.find(f"{MANIFEST}file").get("href")
        assert href in names
        root = ET.fromstring(archive.read(href))  # raises if not well-formed

    assert root.tag == f"{QTI}questestinterop"
    section = root.find(f"{QTI}assessment/{QTI}section")
    items = section.findall(f"{QTI}item")
    assert len(items) == len(questions)
    for question, item in zip(questions, items):
        assert item.get("ident") == question["id"]
        fields = {f.findtext(f"{QTI}fieldlabel"): f.findtext(f"{QTI}fieldentry")
                  for f in item.iter(f"{QTI}qtimetadatafield")}
        assert float(fields["points_possible"]) == question["points"]
        conditions = item.findall(f"{QTI}resprocessing/{QTI}respcondition")
        scoring = [c for c in conditions if c.find(f"{QTI}setvar") is not None]
        assert len(scoring) == 1 and scoring[0].findtext(f"{QTI}setvar") == "100"
        assert item.find(f"{QTI}itemfeedback/{QTI}flow_mat/{QTI}material/{QTI}mattext").text == question["explanation"]
        if question["kind"] == "numeric":
            assert fields["question_type"] == "numerical_question"
            assert item.find(f"{QTI}presentation/{QTI}response_str/{QTI}render_fib") is not None
            low = float(scoring[0].findtext(f".//{QTI}vargte"))
            high = float(scoring[0].findtext(f".//{QTI}varlte"))
            assert low <= bank_module.numeric_answer(question) <= high
            continue
        lid = item.find(f"{QTI}presentation/{QTI}response_lid")
        labels = lid.findall(f"{QTI}render_choice/{QTI}response_label")
        label_texts = {l.get("ident"): l.findtext(f"{QTI}material/{QTI}mattext") for l in labels}
        condition = scoring[0].find(f"{QTI}conditionvar")
        if question["kind"] == "truefalse":
            assert fields["question_type"] == "true_false_question"
            assert label_texts[condition.findtext(f"{QTI}varequal")] == str(question["answer"])
            continue
        assert [label_texts[l.get("ident")] for l in labels] == [c["text"] for c in export_order(question)]
        assert lid.find(f"{QTI}render_choice").get("shuffle") == "Yes"
        correct = {c["text"] for c in question["choices"] if c.get("correct")}
        if question["kind"] == "single":
            assert lid.get("rcardinality") == "Single"
            assert fields["question_type"] == "multiple_choice_question"
            assert label_texts[condition.findtext(f"{QTI}varequal")] in correct
        else:
            assert lid.get("rcardinality") == "Multiple"
            assert fields["question_type"] == "multiple_answers_question"
            required = {label_texts[v.text] for v in condition.findall(f"{QTI}and/{QTI}varequal")}
            excluded = {label_texts[v.text] for v in condition.findall(f"{QTI}and/{QTI}not/{QTI}varequal")}
            assert required == correct and excluded == set(label_texts.values()) - correct


def test_cli_export_both_formats_and_lecture_filter(tmp_path, questions):
    assert main(["export", "--format", "gift", "--out", str(tmp_path / "l7.gift"), "--lecture", "7"]) == 0
    parsed = parse_gift((tmp_path / "l7.gift").read_text(encoding="utf-8"))
    assert len(parsed) == sum(q["lecture"] == 7 for q in questions)
    assert main(["export", "--format", "qti", "--out", str(tmp_path / "all.zip")]) == 0
    assert zipfile.is_zipfile(tmp_path / "all.zip")


def test_exports_do_not_keep_the_bank_order(questions, tmp_path):
    """A correct option's bank position must not survive into the export (the LMS may not shuffle)."""
    choice_questions = [q for q in questions if q["kind"] in ("single", "multi")]
    parsed = {entry["title"]: entry for entry in parse_gift(export_gift(questions, tmp_path / "b.gift").read_text())}
    moved = sum([text for text, _ in parsed[q["id"]]["options"]] != [c["text"] for c in q["choices"]]
                for q in choice_questions)
    assert moved > 0.6 * len(choice_questions)
    assert export_order(choice_questions[0]) == export_order(choice_questions[0])  # stable across runs
