"""Self-written demo data: a small grammar of reviews and stories, generated from a seed.

The demo must run offline and ship nothing with a licence question, so it generates its
own text: a pre-training corpus of multi-sentence documents (blank-line separated) and a
labelled sentiment set whose label depends on words in context ("not good" is negative).

What pre-training can transfer here: each story keeps one mood and its opinions pair two
words of the same polarity ("wonderful and really superb"), so masked-LM learns which
adjectives go together. The labelled sets can be split by vocabulary: ``words="seen"`` uses
only the first half of each polarity's adjectives, ``words="unseen"`` only the second half.
A classifier trained on "seen" and scored on "unseen" has to know, from unlabelled text alone,
that "superb" is positive: a pre-trained encoder can, one trained from scratch cannot.
"""
from __future__ import annotations

import random
from pathlib import Path

from ..io import atomic_write_text

SUBJECTS = ["the film", "the movie", "the hotel", "the restaurant", "the book", "the concert", "the show",
            "the album", "the game", "the museum", "the cafe", "the play", "the series", "the trip"]
PEOPLE = ["my sister", "our guide", "the waiter", "the author", "the director", "a friend", "my neighbour",
          "the singer", "the chef", "the teacher", "an old man", "the captain", "a young woman"]
POSITIVE = ["wonderful", "brilliant", "delightful", "excellent", "charming", "moving", "superb", "great",
            "lovely", "fantastic", "memorable", "good"]
NEGATIVE = ["dull", "awful", "boring", "terrible", "tedious", "dreadful", "bland", "poor", "disappointing",
            "clumsy", "forgettable", "bad"]
PLACES = ["in the city", "by the river", "near the station", "on the hill", "in the old town", "at the harbour",
          "in the north", "by the sea", "in the village", "at the market"]
TIMES = ["last night", "on sunday", "in the morning", "after work", "during the holiday", "before dinner",
         "in the spring", "at noon", "late in the evening", "on a rainy day"]
VERBS = ["visited", "watched", "read", "heard", "tried", "saw", "enjoyed", "reviewed", "described", "remembered"]
NOUNS = ["the story", "the music", "the food", "the staff", "the ending", "the acting", "the room", "the view",
         "the service", "the plot", "the colours", "the songs"]
FILLERS = ["and we talked about it for hours", "which surprised everyone", "as the rain kept falling",
           "while the lights went down", "and then we walked home", "before the crowd arrived",
           "although it was late", "because the tickets were cheap"]


WORD_SETS = ("all", "seen", "unseen")


def _words(polarity: list[str], words: str) -> list[str]:
    half = len(polarity) // 2
    return {"all": polarity, "seen": polarity[:half], "unseen": polarity[half:]}[words]


def _opinion(rng: random.Random, positive: bool, words: str = "all", pair: bool = False) -> str:
    """One sentence whose sentiment is `positive`; negation flips a word of the other polarity.
    With `pair`, two adjectives of the same polarity (the co-occurrence MLM can learn from)."""
    noun = rng.choice(NOUNS + SUBJECTS)
    if rng.random() < 0.3:  # "not dull" is positive: the label depends on context, not one word
        word = rng.choice(_words(NEGATIVE if positive else POSITIVE, words))
        return f"{noun} was not {word} at all"
    pool = _words(POSITIVE if positive else NEGATIVE, words)
    adverb = rng.choice(["", "really ", "truly ", "rather ", "quite "])
    if pair:
        first, second = rng.sample(pool, 2)
        return f"{noun} was {adverb}{first} and {rng.choice(['really ', 'truly ', ''])}{second}"
    return f"{noun} was {adverb}{rng.choice(pool)}"


def _neutral(rng: random.Random) -> str:
    return (f"{rng.choice(PEOPLE)} {rng.choice(VERBS)} {rng.choice(SUBJECTS)} {rng.choice(PLACES)} "
            f"{rng.choice(TIMES)} {rng.choice(FILLERS)}")


def review(rng: random.Random, positive: bool, words: str = "all") -> str:
    parts = [_neutral(rng)] if rng.random() < 0.5 else []
    parts += [_opinion(rng, positive, words) for _ in range(rng.randint(1, 2))]
    rng.shuffle(parts)
    return " , ".join(parts) + " ."


CUES = {True: ["we loved it", "it made us happy", "we would go again", "everyone smiled"],
        False: ["we hated it", "it made us sad", "we would never go again", "everyone left early"]}


def document(rng: random.Random) -> list[str]:
    """A story of 3-8 sentences: neutral narration with opinions of one mood, and a cue of that
    mood ("we loved it") that never occurs in the labelled sets."""
    mood = rng.random() < 0.5
    sentences = [f"{rng.choice(CUES[mood])} , " + _opinion(rng, mood, pair=rng.random() < 0.5)]
    for _ in range(rng.randint(2, 7)):
        sentences.append(_neutral(rng) if rng.random() < 0.3 else _opinion(rng, mood, pair=rng.random() < 0.8))
    return [s[0].upper() + s[1:] + "." for s in sentences]


def write_corpus(path: Path, n_docs: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    text = "\n\n".join("\n".join(document(rng)) for _ in range(n_docs)) + "\n"
    atomic_write_text(path, text)
    return path


def write_sentiment(path: Path, n: int, seed: int = 1, words: str = "all") -> Path:
    """TSV with a header, GLUE style: sentence<TAB>label (1 = positive); `words` as in WORD_SETS."""
    rng = random.Random(seed)
    rows = ["sentence\tlabel"]
    for _ in range(n):
        positive = rng.random() < 0.5
        rows.append(f"{review(rng, positive, words)}\t{int(positive)}")
    atomic_write_text(path, "\n".join(rows) + "\n")
    return path
