"""A rule-based noun-phrase chunker for `prompt` mode (no model to download).

An answer is split into words (letters, digits, apostrophes and inner hyphens); a chunk ends at
punctuation and at a closed-class word that cannot sit inside an English noun phrase (verbs of
being and having, prepositions, conjunctions, pronouns, adverbs such as "there"); determiners and
quantifiers may only open a chunk. A chunk is kept when it holds a word that is neither a
determiner nor a number word, so "There is a red circle next to the blue square." gives
"a red circle" and "the blue square". It does not tag parts of speech: an open-class verb
("a dog runs") stays in its chunk ("a dog runs"), which is why `phrases` mode exists.
"""

from __future__ import annotations

import re

WORD = re.compile(r"[A-Za-z0-9]+(?:['\-][A-Za-z0-9]+)*")
DETERMINERS = frozenset(
    "a an the this that these those my your his her its our their some any each every no another "
    "all both either neither several many few much".split())
NUMBERS = frozenset("one two three four five six seven eight nine ten".split())
BOUNDARIES = frozenset(
    # be / have / do and modals
    "is are was were be been being am 's has have had having do does did can could will would shall "
    "should may might must "
    # prepositions
    "in on at of to from with without by for into onto over under above below behind beside besides "
    "between among near next through across around along against toward towards inside outside "
    "upon within beneath about like than as "
    # conjunctions and relatives
    "and or but nor so yet while whereas because although though if then which who whom whose where "
    "when what why how "
    # pronouns and adverbs
    "it they them he she him we us you i me there here also very too not only just left right top "
    "bottom middle centre center front back".split())


def noun_phrases(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the noun phrases of `text`, in order."""
    spans: list[tuple[int, int]] = []
    current: list[re.Match[str]] = []
    last_end = 0

    def close() -> None:
        if any(m.group().lower() not in DETERMINERS | NUMBERS for m in current):
            spans.append((current[0].start(), current[-1].end()))
        current.clear()

    for match in WORD.finditer(text):
        word = match.group().lower()
        if current and re.search(r"[^\w\s'\-]", text[last_end:match.start()]):
            close()  # punctuation between words ends a chunk
        last_end = match.end()
        if word in BOUNDARIES:
            close()
        elif word in DETERMINERS and current:
            close()
            current.append(match)
        else:
            current.append(match)
    close()
    return spans


def chunk(text: str) -> list[str]:
    return [text[a:b] for a, b in noun_phrases(text)]
