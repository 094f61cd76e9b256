"""The --where filter language: parses what the README shows, refuses what it does not."""
import pytest

from orchestrator.where import WhereError, compile_where

REC = {"id": "a1", "error": None, "attempts": 2, "prompt": "A Cat on a mat",
       "captions": {"blip": "a cat sitting", "git": "a dog"}, "outputs": ["s3://b/x-0.png"],
       "ocr": {"text": "", "lines": []}, "scores": {"clip-i:output:0": 0.83, "clip-t": 0.2},
       "meta": {"key": "s.0001", "split": "train"}, "reused": ["caption:blip"]}
BAD = {**REC, "error": "timeout: caption:blip overran its time limit", "outputs": []}


@pytest.mark.parametrize("expr,good,bad", [
    ("error==null", True, False),
    ("error!=null", False, True),
    ("kind==timeout", False, True),
    ("kind==timeout or kind==oom", False, True),
    ("captions.blip~CAT", True, True),
    ("captions.git!~cat", True, True),
    ("captions~dog", True, True),                      # a dict matches on any value
    ("clip-i:output:0>=0.8", True, True),              # falls back to scores
    ('scores."clip-i:output:0" < 0.8', False, False),
    ("clip-t>0.5", False, False),
    ("attempts>1 and not error", True, False),
    ("meta.split==train", True, True),
    ("split=='train'", True, True),                    # falls back to meta
    ("outputs.0", True, False),
    ("outputs.0~x-0", True, False),
    ("ocr.text", False, False),                        # empty string is not truthy
    ("ocr.text==\"\"", True, True),
    ("missing==null and missing.deeper==null", True, True),
    ("missing>3", False, False),                       # ordering with null: false
    ("prompt>3", False, False),                        # ordering with a non-number: false
    ("(error==null or attempts==2) and reused~blip", True, True),
    ("not (error==null)", False, True),
    ("attempts==2.0", True, True),
])
def test_filters(expr, good, bad):
    f = compile_where(expr)
    assert f(REC) is good
    assert f(BAD) is bad


@pytest.mark.parametrize("expr,msg", [
    ("error==", "expected num or str or name"),
    ("(error==null", "expected rp"),
    ("error==null extra", "expected end"),
    ("__import__('os')", "expected end"),
    ("a;b", "unexpected ';'"),
    ("a.-1", "not a list index"),
])
def test_bad_filters_say_where(expr, msg):
    with pytest.raises(WhereError, match=msg.replace("(", r"\(")):
        compile_where(expr)


def test_blank_matches_everything():
    assert compile_where(None)(REC) and compile_where("  ")(BAD)
