"""Exports of the whole bank for learning-management systems.

- Moodle GIFT (plain text, one question per block, categories per lecture).
- Canvas-compatible QTI 1.2: a zip with imsmanifest.xml and one assessment XML.

LMS questions are not per-student draws: choice options are written in a fixed
shuffled order (testwise.export_order), so even an LMS that does not shuffle shows
no bank order; QTI also sets shuffle="Yes", and Moodle's quiz setting "Shuffle
within questions" (on by default) reshuffles GIFT options per attempt. Numeric
questions use the default parameters, with the tolerance turned into an absolute
margin for that default answer.
"""

from __future__ import annotations

import string
import zipfile
from decimal import Decimal
from pathlib import Path
from xml.etree import ElementTree as ET

from . import bank as bank_module
from .generate import COURSE_TITLE
from .testwise import export_order

GIFT_SPECIAL = "\\~=#{}:"


def gift_escape(text: str) -> str:
    """Backslash-escape GIFT's reserved characters; newlines become the \\n escape."""
    escaped = "".join("\\" + char if char in GIFT_SPECIAL else char for char in text)
    return escaped.replace("\r", "").replace("\n", "\\n")


def plain_number(value: float, significant: int = 10) -> str:
    """Decimal notation without exponent (LMS numeric parsers often reject 1e-05)."""
    text = format(Decimal(f"{value:.{significant}g}"), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def default_instance(question: dict) -> dict:
    """The single fixed draw used for LMS export: prompt, answer and absolute margin."""
    instance = {"prompt": bank_module.render_prompt(question)}
    if question["kind"] == "numeric":
        answer = bank_module.numeric_answer(question)
        tolerance = question["tolerance"]
        margin = tolerance["abs"] if "abs" in tolerance else tolerance["rel"] * abs(answer)
        instance.update(answer=answer, margin=margin, prompt=f"{instance['prompt']} (Unit: {question['unit']})")
    return instance


def multi_weights(num_correct: int) -> tuple[str, str]:
    """Moodle percentages that reproduce the course's partial-credit rule (Moodle floors at 0)."""
    share = plain_number(100.0 / num_correct, 7)
    return share, f"-{share}"


# --- GIFT ------------------------------------------------------------------------

def question_to_gift(question: dict) -> str:
    instance = default_instance(question)
    title = gift_escape(question["id"])
    text = gift_escape(instance["prompt"])
    feedback = "####" + gift_escape(question["explanation"])
    kind = question["kind"]
    if kind == "single":
        options = [("=" if choice.get("correct") else "~") + gift_escape(choice["text"])
                   for choice in export_order(question)]
    elif kind == "multi":
        right, wrong = multi_weights(sum(bool(c.get("correct")) for c in question["choices"]))
        options = [f"~%{right if choice.get('correct') else wrong}%" + gift_escape(choice["text"])
                   for choice in export_order(question)]
    elif kind == "truefalse":
        options = ["TRUE" if question["answer"] else "FALSE"]
    else:
        options = [f"#{plain_number(instance['answer'])}:{plain_number(instance['margin'])}"]
    body = "\n".join(f"\t{option}" for option in options)
    return f"// lecture {question['lecture']}, {kind}, {question['points']:g} points\n" \
           f"::{title}::[plain]{text} {{\n{body}\n\t{feedback}\n}}\n"


def export_gift(questions: list[dict], path) -> Path:
    blocks = []
    current_lecture = None
    for question in questions:
        if question["lecture"] != current_lecture:
            current_lecture = question["lecture"]
            title = bank_module.LECTURE_TITLES.get(current_lecture, "")
            blocks.append(f"$CATEGORY: $course$/{COURSE_TITLE}/Lecture {current_lecture} {title}\n")
        blocks.append(question_to_gift(question))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(blocks), encoding="utf-8")
    return path


# --- QTI 1.2 ---------------------------------------------------------------------

QTI_NAMESPACE = "http://www.imsglobal.org/xsd/ims_qtiasiv1p2"
MANIFEST_NAMESPACE = "http://www.imsglobal.org/xsd/imsccv1p1/imscp_v1p1"
CANVAS_TYPES = {"single": "multiple_choice_question", "multi": "multiple_answers_question",
                "truefalse": "true_false_question", "numeric": "numerical_question"}


def _sub(parent, tag, text=None, **attributes):
    element = ET.SubElement(parent, tag, {k: str(v) for k, v in attributes.items()})
    if text is not None:
        element.text = text
    return element


def _material(parent, text, texttype="text/plain"):
    _sub(_sub(parent, "material"), "mattext", text, texttype=texttype)


def _metadata(parent, fields: dict):
    metadata = _sub(parent, "qtimetadata")
    for label, entry in fields.items():
        field_element = _sub(metadata, "qtimetadatafield")
        _sub(field_element, "fieldlabel", label)
        _sub(field_element, "fieldentry", str(entry))


def _choice_options(question: dict) -> list[tuple[str, str, bool]]:
    if question["kind"] == "truefalse":
        return [("T", "True", question["answer"] is True), ("F", "False", question["answer"] is False)]
    return [(string.ascii_uppercase[i], choice["text"], bool(choice.get("correct")))
            for i, choice in enumerate(export_order(question))]


def question_to_qti_item(section, question: dict) -> None:
    instance = default_instance(question)
    kind = question["kind"]
    item = _sub(section, "item", ident=question["id"], title=question["id"])
    _metadata(_sub(item, "itemmetadata"), {"question_type": CANVAS_TYPES[kind],
                                            "points_possible": f"{float(question['points']):.1f}"})
    presentation = _sub(item, "presentation")
    _material(presentation, instance["prompt"])
    processing = _sub(item, "resprocessing")
    _sub(_sub(processing, "outcomes"), "decvar", maxvalue="100", minvalue="0", varname="SCORE", vartype="Decimal")
    # First condition always fires (<other/>) and shows the explanation, as Canvas exports do.
    general = _sub(processing, "respcondition", **{"continue": "Yes"})
    _sub(_sub(general, "conditionvar"), "other")
    _sub(general, "displayfeedback", feedbacktype="Response", linkrefid="general_fb")

    if kind == "numeric":
        response = _sub(presentation, "response_str", ident="response1", rcardinality="Single")
        _sub(response, "render_fib", fibtype="Decimal")
        condition = _sub(processing, "respcondition", **{"continue": "No"})
        either = _sub(_sub(condition, "conditionvar"), "or")
        _sub(either, "varequal", plain_number(instance["answer"]), respident="response1")
        band = _sub(either, "and")
        _sub(band, "vargte", plain_number(instance["answer"] - instance["margin"]), respident="response1")
        _sub(band, "varlte", plain_number(instance["answer"] + instance["margin"]), respident="response1")
        _sub(condition, "setvar", "100", action="Set", varname="SCORE")
    else:
        options = _choice_options(question)
        cardinality = "Multiple" if kind == "multi" else "Single"
        response = _sub(presentation, "response_lid", ident="response1", rcardinality=cardinality)
        render = _sub(response, "render_choice", shuffle="No" if kind == "truefalse" else "Yes")
        for label, text, _ in options:
            _material(_sub(render, "response_label", ident=label), text)
        condition = _sub(processing, "respcondition", **{"continue": "No"})
        condition_var = _sub(condition, "conditionvar")
        if kind == "multi":
            # Canvas' own multiple-answers encoding: all correct picked and no wrong one picked.
            both = _sub(condition_var, "and")
            for label, _, correct in options:
                target = both if correct else _sub(both, "not")
                _sub(target, "varequal", label, respident="response1")
        else:
            correct_label = next(label for label, _, correct in options if correct)
            _sub(condition_var, "varequal", correct_label, respident="response1")
        _sub(condition, "setvar", "100", action="Set", varname="SCORE")

    feedback = _sub(item, "itemfeedback", ident="general_fb")
    _material(_sub(feedback, "flow_mat"), question["explanation"])


def build_qti_assessment(questions: list[dict], assessment_id: str) -> ET.Element:
    root = ET.Element("questestinterop", {"xmlns": QTI_NAMESPACE})
    assessment = _sub(root, "assessment", ident=assessment_id, title=f"{COURSE_TITLE}: question bank")
    _metadata(assessment, {"cc_maxattempts": "1"})
    section = _sub(assessment, "section", ident="root_section")
    for question in questions:
        question_to_qti_item(section, question)
    return root


def build_manifest(assessment_id: str, assessment_href: str) -> ET.Element:
    manifest = ET.Element("manifest", {"identifier": f"{assessment_id}_manifest", "xmlns": MANIFEST_NAMESPACE})
    metadata = _sub(manifest, "metadata")
    _sub(metadata, "schema", "IMS Content")
    _sub(metadata, "schemaversion", "1.1.3")
    _sub(manifest, "organizations")
    resource = _sub(_sub(manifest, "resources"), "resource", identifier=assessment_id, type="imsqti_xmlv1p2",
                    href=assessment_href)
    _sub(resource, "file", href=assessment_href)
    return manifest


def _xml_bytes(element: ET.Element) -> bytes:
    ET.indent(element)
    return ET.tostring(element, encoding="utf-8", xml_declaration=True)


def export_qti(questions: list[dict], path, assessment_id: str = "optcourse_quiz_bank") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    assessment_href = f"{assessment_id}/{assessment_id}.xml"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("imsmanifest.xml", _xml_bytes(build_manifest(assessment_id, assessment_href)))
        archive.writestr(assessment_href, _xml_bytes(build_qti_assessment(questions, assessment_id)))
    return path
