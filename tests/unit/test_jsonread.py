"""jsonread.loads agrees with json.loads, and refuses what json.loads refuses."""
import json
import random

import pytest

from nvlaunch.core import jsonread

DOCS = ['{"ociVersion": "1.0.2", "id": "c1", "pid": 42, "bundle": "/b", "annotations": {}}',
        '  [1, -2.5e3, "x\\u00e9\\n", true, false, null, {"a": {"b": []}}]\n',
        '"just a string"', "0", '{"k": "v", "k": "w"}', '{"\\ud83d\\ude00": 1}']
BAD = ["", "   ", "{", '{"a": 1} x', "[1,]", "NaN", "Infinity", "{'a': 1}", '{"a" 1}',
       '"\\x"', "[1 2]", "01", "tru"]


@pytest.mark.parametrize("doc", DOCS)
def test_same_as_json(doc):
    assert jsonread.loads(doc) == json.loads(doc)
    assert jsonread.loads(doc.encode()) == json.loads(doc)


@pytest.mark.parametrize("doc", BAD)
def test_refused(doc):
    with pytest.raises(ValueError):
        jsonread.loads(doc)


def test_random_mutations_agree():
    rng = random.Random(7)
    base = DOCS[0]
    for _ in range(2000):
        s = list(base)
        for _ in range(rng.randint(1, 3)):
            s[rng.randrange(len(s))] = rng.choice('{}[]",:0a \\')
        text = "".join(s)
        try:
            want = json.loads(text)
        except ValueError:
            with pytest.raises(ValueError):
                jsonread.loads(text)
        else:
            assert jsonread.loads(text) == want
