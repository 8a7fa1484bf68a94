"""StopStrings: stop strings caught across deltas, never emitted; no false positives; flush."""

from __future__ import annotations

import random

import pytest

from temperance.stopping import StopStrings


def run(stops, deltas):
    s = StopStrings(stops)
    out, stopped = [], False
    for d in deltas:
        text, stopped = s.push(d)
        out.append(text)
        if stopped:
            break
    return "".join(out) + ("" if stopped else s.flush()), stopped, s.matched


def test_stop_split_across_deltas_is_not_emitted():
    assert run(["###"], ["Answer: 4", "#", "#", "# more"]) == ("Answer: 4", True, "###")
    assert run(["\n\nUser:"], ["Hi.\n", "\nUs", "er: x"]) == ("Hi.", True, "\n\nUser:")


def test_text_before_stop_in_same_delta_is_emitted():
    assert run(["STOP"], ["abcSTOPdef"]) == ("abc", True, "STOP")


def test_held_text_released_when_it_cannot_match():
    s = StopStrings(["###"])
    assert s.push("a#") == ("a", False)        # "#" might start "###"
    assert s.push("#b") == ("##b", False)      # "##b" cannot: released
    assert s.push("##") == ("", False)
    assert s.flush() == "##"                   # end of generation: release the rest
    assert s.flush() == ""


def test_no_false_positives():
    text = "the end is near; ending soon. en-d. END"
    assert run(["end."], list(text)) == (text, False, None)


def test_earliest_of_several_stops_wins():
    assert run(["bc", "abcd", "x"], ["zab", "cd"]) == ("z", True, "abcd")   # starts first
    assert run(["bc", "abcd"], ["zab", "ce"]) == ("za", True, "bc")
    assert run(["cd", "b"], ["abcd"]) == ("a", True, "b")


def test_after_stop_everything_is_swallowed():
    s = StopStrings(["."])
    assert s.push("a.b") == ("a", True)
    assert s.push("more") == ("", True) and s.flush() == "" and s.stopped


def test_no_stops_passes_through_and_bad_stops_rejected():
    assert StopStrings().push("abc") == ("abc", False)
    with pytest.raises(ValueError):
        StopStrings([""])


def test_copy_is_independent():
    a = StopStrings(["xyz"])
    a.push("ax")
    b = a.copy()
    assert a.push("yz") == ("", True)
    assert b.push("q") == ("xq", False) and not b.stopped


def test_random_splits_agree_with_plain_search():
    rng = random.Random(0)
    stops = ["<|end|>", "\n\n", "aba"]
    for _ in range(300):
        text = "".join(rng.choice("ab\n<|end>x") for _ in range(rng.randint(0, 30)))
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 6))))
        deltas = [text[i:j] for i, j in zip([0] + cuts, cuts + [len(text)])]
        hits = [(text.find(s), s) for s in stops if s in text]
        want = (text[: min(hits)[0]], True) if hits else (text, False)
        assert run(stops, deltas)[:2] == want, (text, deltas)
