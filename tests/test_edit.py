"""Edit rules: every rule kind, their order, and every error case before any work starts."""
import pytest

from workers.spec import PipelineSpec
from workers.stages.edit import STYLES, EditRuleError, Texts, build_prompt, parse_rule, parse_rules

T = Texts(captions={"blip": "a cat sitting on a mat", "git": "a small kitten"},
          ocr="OPEN 24 HOURS", vqa={"what color is it?": "black"}, caption_model="blip")


def prompt(rules, texts=T, **ctx):
    ctx.setdefault("captioners", ["blip", "git"])
    ctx.setdefault("questions", ["what color is it?"])
    return build_prompt(parse_rules(rules, **ctx), texts)


def test_no_rules_uses_chosen_caption():
    assert prompt([]) == "a cat sitting on a mat"
    assert prompt([], Texts(captions={"blip": "x", "git": "y"}, caption_model="git")) == "y"


def test_no_captions_falls_back_to_ocr_text():
    assert prompt([], Texts(ocr="SALE  today"), captioners=[]) == "SALE today"


def test_template_placeholders():
    p = prompt(["template:{caption}; {caption:git}; sign says {ocr}; it is {vqa:what color is it?}"])
    assert p == "a cat sitting on a mat; a small kitten; sign says OPEN 24 HOURS; it is black"


def test_template_literal_braces_and_prompt_placeholder():
    assert prompt(["template:{{{prompt}}}"]) == "{a cat sitting on a mat}"


def test_replace_whole_words_case_insensitive():
    assert prompt(["replace:cat=dog"]) == "a dog sitting on a mat"
    t = Texts(captions={"blip": "Cat concatenates cats; CAT"}, caption_model="blip")
    assert prompt(["replace:cat=dog"], t) == "dog concatenates cats; dog"


def test_regex_with_groups_and_flags():
    assert prompt([r"regex:/(\w+) on a (\w+)/\2 under a \1/"]) == "a cat mat under a sitting"
    assert prompt(["regex:/A CAT/the tiger/i"]) == "the tiger sitting on a mat"
    assert prompt([r"regex:/a\/b/x/"], Texts(captions={"blip": "a/b"}, caption_model="blip")) == "x"


def test_style_appends():
    assert prompt(["style:watercolor"]) == f"a cat sitting on a mat, {STYLES['watercolor']}"


def test_rules_apply_in_order():
    a = prompt(["replace:cat=dog", "template:{prompt} and a cat"])
    b = prompt(["template:{prompt} and a cat", "replace:cat=dog"])
    assert a == "a dog sitting on a mat and a cat"
    assert b == "a dog sitting on a mat and a dog"


def test_unicode_and_empty_texts():
    t = Texts(captions={"blip": ""}, ocr="café ☕ 東京", caption_model="blip")
    assert prompt(["template:{ocr} {caption}"], t) == "café ☕ 東京"
    assert prompt([], Texts(caption_model=None), captioners=[]) == ""


@pytest.mark.parametrize("rule, message", [
    ("template:{foo}", "unknown placeholder {foo}"),
    ("template:{caption:vit}", "names captioner 'vit'"),
    ("template:{vqa:how many?}", "asks 'how many?'"),
    ("template:{caption", "unmatched '{'"),
    ("template:{meta:}", "{meta:} needs a field name"),
    ("template:oops}", "unmatched '}'"),
    ("regex:/(/x/", "missing )"),
    ("regex:/a/\\2/", "invalid group reference"),
    ("regex:no-slashes", "write regex:/PATTERN/REPLACEMENT/FLAGS"),
    ("regex:/a/b/q", "write regex:/PATTERN/REPLACEMENT/FLAGS"),
    ("style:vaporwave", "unknown style 'vaporwave'"),
    ("replace:=dog", "write replace:OLD=NEW"),
    ("replace:catdog", "write replace:OLD=NEW"),
    ("shout:LOUD", "unknown edit rule kind 'shout'"),
    ("no colon", "has no kind"),
])
def test_errors(rule, message):
    with pytest.raises(EditRuleError) as e:
        parse_rule(rule, captioners=["blip", "git"], questions=["what color is it?"])
    assert message in str(e.value)


def test_meta_placeholder_fills_from_the_items_metadata_and_empty_when_missing():
    t = Texts(captions={"blip": "a cat"}, caption_model="blip",
              meta={"caption": "LAION alt text", "key": "000123", "n": 7})
    assert prompt(["template:{caption}, {meta:caption} ({meta:key}, {meta: n})"], t) == \
        "a cat, LAION alt text (000123, 7)"
    assert prompt(["template:{caption}, {meta:caption}"], T) == "a cat sitting on a mat,"
    assert parse_rule("template:{meta:anything at all}").kind == "template"


def test_ocr_placeholder_needs_ocr():
    with pytest.raises(EditRuleError, match="OCR is off"):
        parse_rule("template:{ocr}", has_ocr=False)


def test_spec_checks_rules_before_any_work():
    with pytest.raises(EditRuleError, match="unknown placeholder"):
        PipelineSpec(edits=["template:{nope}"]).resolved("tiny-random")
    with pytest.raises(EditRuleError, match="no captioner runs"):
        PipelineSpec(captioners=[], edits=["template:{caption}"]).resolved("tiny-random")
    spec = PipelineSpec(vqa=["what?"], edits=["template:{vqa:what?}"]).resolved("tiny-random")
    assert spec.captioners == ["blip", "git", "vit-gpt2"] and spec.ocr == "rapidocr"


def test_resolving_a_spec_fills_defaults_once():
    """A partly filled spec gets every other default from its profile; resolving again changes
    nothing, so a stage turned off stays off."""
    spec = PipelineSpec(profile="tiny-random", captioners=["blip"]).resolved("base")
    assert (spec.ocr, spec.generator, spec.size, spec.steps) == ("rapidocr", "sd", "64x64", 4)
    off = PipelineSpec(ocr="none", generator="none").resolved("tiny-random")
    again = off.resolved("tiny-random")
    assert again.ocr is None and again.generator is None
    assert again.fingerprint() == off.fingerprint()
