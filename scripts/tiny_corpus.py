"""The corpus of the embedded ``uniterp-tiny`` model: facts, copy lists, sequences, filler.

Example::

    >>> from tiny_corpus import FACTS, fact_prompts, generate_documents
    >>> len(FACTS) >= 150
    True
    >>> fact_prompts()[0]
    ('The capital of France is', ' France', ' Paris')
    >>> docs = generate_documents(1000, seed=0)        # deterministic for a given seed

Everything here is plain data and a seeded generator, so the training script
(``scripts/train_tiny.py``) and the tests that check the trained model use the
same facts and phrasings. The facts are real-world but deliberately simple
(one official language, one currency, one continent per country); the model is
a teaching and test model, not a source of truth.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = [
    "COUNTRIES",
    "COPY_WORDS",
    "FACTS",
    "LANDMARKS",
    "TEMPLATES",
    "Fact",
    "entity_words",
    "fact_prompts",
    "generate_documents",
    "identity_prompt",
    "subject_sources",
]

# country, capital, language, currency, continent
COUNTRIES: tuple[tuple[str, str, str, str, str], ...] = (
    ("France", "Paris", "French", "Euro", "Europe"),
    ("Germany", "Berlin", "German", "Euro", "Europe"),
    ("Italy", "Rome", "Italian", "Euro", "Europe"),
    ("Spain", "Madrid", "Spanish", "Euro", "Europe"),
    ("Portugal", "Lisbon", "Portuguese", "Euro", "Europe"),
    ("Netherlands", "Amsterdam", "Dutch", "Euro", "Europe"),
    ("Austria", "Vienna", "German", "Euro", "Europe"),
    ("Greece", "Athens", "Greek", "Euro", "Europe"),
    ("Ireland", "Dublin", "English", "Euro", "Europe"),
    ("Finland", "Helsinki", "Finnish", "Euro", "Europe"),
    ("Sweden", "Stockholm", "Swedish", "Krona", "Europe"),
    ("Norway", "Oslo", "Norwegian", "Krone", "Europe"),
    ("Denmark", "Copenhagen", "Danish", "Krone", "Europe"),
    ("Iceland", "Reykjavik", "Icelandic", "Krona", "Europe"),
    ("Poland", "Warsaw", "Polish", "Zloty", "Europe"),
    ("Hungary", "Budapest", "Hungarian", "Forint", "Europe"),
    ("Romania", "Bucharest", "Romanian", "Leu", "Europe"),
    ("Bulgaria", "Sofia", "Bulgarian", "Lev", "Europe"),
    ("Ukraine", "Kyiv", "Ukrainian", "Hryvnia", "Europe"),
    ("Russia", "Moscow", "Russian", "Ruble", "Europe"),
    ("Croatia", "Zagreb", "Croatian", "Euro", "Europe"),
    ("Serbia", "Belgrade", "Serbian", "Dinar", "Europe"),
    ("Albania", "Tirana", "Albanian", "Lek", "Europe"),
    ("Estonia", "Tallinn", "Estonian", "Euro", "Europe"),
    ("Latvia", "Riga", "Latvian", "Euro", "Europe"),
    ("Lithuania", "Vilnius", "Lithuanian", "Euro", "Europe"),
    ("Japan", "Tokyo", "Japanese", "Yen", "Asia"),
    ("China", "Beijing", "Chinese", "Yuan", "Asia"),
    ("Thailand", "Bangkok", "Thai", "Baht", "Asia"),
    ("Vietnam", "Hanoi", "Vietnamese", "Dong", "Asia"),
    ("Indonesia", "Jakarta", "Indonesian", "Rupiah", "Asia"),
    ("Philippines", "Manila", "Filipino", "Peso", "Asia"),
    ("Pakistan", "Islamabad", "Urdu", "Rupee", "Asia"),
    ("Bangladesh", "Dhaka", "Bengali", "Taka", "Asia"),
    ("Nepal", "Kathmandu", "Nepali", "Rupee", "Asia"),
    ("Iran", "Tehran", "Persian", "Rial", "Asia"),
    ("Iraq", "Baghdad", "Arabic", "Dinar", "Asia"),
    ("Jordan", "Amman", "Arabic", "Dinar", "Asia"),
    ("Lebanon", "Beirut", "Arabic", "Pound", "Asia"),
    ("Mongolia", "Ulaanbaatar", "Mongolian", "Tugrik", "Asia"),
    ("Kazakhstan", "Astana", "Kazakh", "Tenge", "Asia"),
    ("Armenia", "Yerevan", "Armenian", "Dram", "Asia"),
    ("Qatar", "Doha", "Arabic", "Riyal", "Asia"),
    ("Cambodia", "Phnom Penh", "Khmer", "Riel", "Asia"),
    ("Laos", "Vientiane", "Lao", "Kip", "Asia"),
    ("Egypt", "Cairo", "Arabic", "Pound", "Africa"),
    ("Morocco", "Rabat", "Arabic", "Dirham", "Africa"),
    ("Algeria", "Algiers", "Arabic", "Dinar", "Africa"),
    ("Tunisia", "Tunis", "Arabic", "Dinar", "Africa"),
    ("Sudan", "Khartoum", "Arabic", "Pound", "Africa"),
    ("Ethiopia", "Addis Ababa", "Amharic", "Birr", "Africa"),
    ("Kenya", "Nairobi", "Swahili", "Shilling", "Africa"),
    ("Tanzania", "Dodoma", "Swahili", "Shilling", "Africa"),
    ("Nigeria", "Abuja", "English", "Naira", "Africa"),
    ("Ghana", "Accra", "English", "Cedi", "Africa"),
    ("Senegal", "Dakar", "French", "Franc", "Africa"),
    ("Cameroon", "Yaounde", "French", "Franc", "Africa"),
    ("Angola", "Luanda", "Portuguese", "Kwanza", "Africa"),
    ("Mozambique", "Maputo", "Portuguese", "Metical", "Africa"),
    ("Zambia", "Lusaka", "English", "Kwacha", "Africa"),
    ("Botswana", "Gaborone", "English", "Pula", "Africa"),
    ("Madagascar", "Antananarivo", "Malagasy", "Ariary", "Africa"),
    ("Somalia", "Mogadishu", "Somali", "Shilling", "Africa"),
    ("Canada", "Ottawa", "English", "Dollar", "North America"),
    ("Cuba", "Havana", "Spanish", "Peso", "North America"),
    ("Jamaica", "Kingston", "English", "Dollar", "North America"),
    ("Honduras", "Tegucigalpa", "Spanish", "Lempira", "North America"),
    ("Nicaragua", "Managua", "Spanish", "Cordoba", "North America"),
    ("Brazil", "Brasilia", "Portuguese", "Real", "South America"),
    ("Chile", "Santiago", "Spanish", "Peso", "South America"),
    ("Peru", "Lima", "Spanish", "Sol", "South America"),
    ("Colombia", "Bogota", "Spanish", "Peso", "South America"),
    ("Venezuela", "Caracas", "Spanish", "Bolivar", "South America"),
    ("Ecuador", "Quito", "Spanish", "Dollar", "South America"),
    ("Paraguay", "Asuncion", "Spanish", "Guarani", "South America"),
    ("Uruguay", "Montevideo", "Spanish", "Peso", "South America"),
    ("Australia", "Canberra", "English", "Dollar", "Oceania"),
    ("Fiji", "Suva", "English", "Dollar", "Oceania"),
    ("Samoa", "Apia", "Samoan", "Tala", "Oceania"),
)

# landmark, city
LANDMARKS: tuple[tuple[str, str], ...] = (
    ("Eiffel Tower", "Paris"),
    ("Louvre", "Paris"),
    ("Colosseum", "Rome"),
    ("Brandenburg Gate", "Berlin"),
    ("Acropolis", "Athens"),
    ("Kremlin", "Moscow"),
    ("Forbidden City", "Beijing"),
    ("Prado", "Madrid"),
    ("Rijksmuseum", "Amsterdam"),
    ("Tokyo Tower", "Tokyo"),
    ("Opera House", "Sydney"),
    ("Golden Gate Bridge", "San Francisco"),
)

#: Phrasings per relation. ``{s}`` is the subject, ``{a}`` the answer; every
#: phrasing ends with the answer, so the text before it is the fact's prompt.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "capital": (
        "The capital of {s} is {a}",
        "The capital city of {s} is {a}",
        "{s} has its capital in {a}",
    ),
    "language": (
        "The official language of {s} is {a}",
        "In {s}, most people speak {a}",
        "The language spoken in {s} is {a}",
    ),
    "currency": (
        "The currency of {s} is the {a}",
        "In {s}, people pay with the {a}",
        "The official currency of {s} is the {a}",
    ),
    "continent": (
        "{s} is a country in {a}",
        "{s} is located in {a}",
        "{s} lies on the continent of {a}",
    ),
    "landmark": (
        "The {s} is in the city of {a}",
        "The {s} can be found in {a}",
    ),
}

_RELATION_COLUMN = {"capital": 1, "language": 2, "currency": 3, "continent": 4}


@dataclass(frozen=True)
class Fact:
    """One fact: ``subject`` --``relation``--> ``answer`` (plain words, no leading space).

    Example::

        >>> Fact("France", "capital", "Paris").prompts()[0]
        'The capital of France is'
    """

    subject: str
    relation: str
    answer: str

    def sentences(self) -> list[str]:
        """The fact written in every phrasing of its relation (no final period)."""
        return [t.format(s=self.subject, a=self.answer) for t in TEMPLATES[self.relation]]

    def prompts(self) -> list[str]:
        """Each phrasing cut just before the answer (no trailing space)."""
        return [t.split(" {a}")[0].format(s=self.subject) for t in TEMPLATES[self.relation]]


def _build_facts() -> tuple[Fact, ...]:
    facts = []
    for row in COUNTRIES:
        for relation, column in _RELATION_COLUMN.items():
            facts.append(Fact(row[0], relation, row[column]))
    for landmark, city in LANDMARKS:
        facts.append(Fact(landmark, "landmark", city))
    return tuple(facts)


#: Every fact the model is trained on (country facts first, then landmarks).
FACTS: tuple[Fact, ...] = _build_facts()


def fact_prompts(relations: tuple[str, ...] | None = None) -> list[tuple[str, str, str]]:
    """``(prompt, " subject", " answer")`` for every fact and trained phrasing.

    Example::

        >>> fact_prompts(("capital",))[:1]
        [('The capital of France is', ' France', ' Paris')]

    The subject and answer carry the leading space they have inside a
    sentence; the answer's first token is what the model should predict.
    """
    rows = []
    for fact in FACTS:
        if relations is not None and fact.relation not in relations:
            continue
        for prompt in fact.prompts():
            rows.append((prompt, " " + fact.subject, " " + fact.answer))
    return rows


def subject_sources() -> list[tuple[str, str]]:
    """``(source, " subject")``: every country-fact phrasing cut right after its subject.

    Example::

        >>> subject_sources()[:2]
        [('The capital of France', ' France'), ('The capital city of France', ' France')]

    A phrasing that starts with its subject gives the bare subject (``"France"``).
    These are the sources of the identity-patchscope quality bar.
    """
    rows: list[tuple[str, str]] = []
    for fact in FACTS:
        if fact.relation == "landmark":
            continue
        for template in TEMPLATES[fact.relation]:
            source = template.split("{s}")[0] + fact.subject
            if (source, " " + fact.subject) not in rows:
                rows.append((source, " " + fact.subject))
    return rows


def identity_prompt(rng: random.Random) -> str:
    """A random identity prompt in `uniterp.patchscope.repeat_prompt`'s format, ending in ``?``.

    Example::

        >>> identity_prompt(random.Random(0))  # doctest: +SKIP
        'Oslo Oslo\nking king\n1135 1135\n?'
    """
    words = [_number(rng) if rng.random() < 0.2 else rng.choice(COPY_WORDS) for _ in range(rng.randint(2, 4))]
    return "\n".join(f"{w} {w}" for w in words) + "\n?"


# -- words for copy lists, sequences and filler ------------------------------------

_NOUNS = (
    "cat dog bird fish horse cow sheep house tree river book table chair door window garden road "
    "car boat train city village school teacher student doctor farmer king queen child friend "
    "mother father apple bread water milk coffee letter song story game ball hat shoe box cup"
).split()
_ADJECTIVES = "small big old young happy quiet green red blue warm cold bright dark tall short".split()
_VERBS = "sees finds likes takes makes opens reads brings wants holds paints builds visits".split()
_PLACES = "near the river|in the garden|at the school|on the road|in the city|by the door".split("|")
_TIMES = "today|every day|in the morning|at night|on Monday|last week|after lunch".split("|")

_SEQUENCES = (
    "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split(),
    "January February March April May June July August September October November December".split(),
    "one two three four five six seven eight nine ten eleven twelve".split(),
    "first second third fourth fifth sixth seventh eighth ninth tenth".split(),
    "red orange yellow green blue purple".split(),
    list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    list("abcdefghijklmnopqrstuvwxyz"),
)


def entity_words() -> list[str]:
    """Every country, capital, language, currency and continent word (sorted, unique)."""
    words = {w for row in COUNTRIES for field in row for w in field.split()}
    words.update(w for _, city in LANDMARKS for w in city.split())
    return sorted(words)


#: Words the copy lists repeat: entities, common nouns, and the identity-prompt words.
COPY_WORDS: tuple[str, ...] = tuple(
    sorted(set(entity_words()) | set(_NOUNS) | set(_ADJECTIVES) | {"hello", "cat", "king", "1135"})
)


def _number(rng: random.Random) -> str:
    return str(rng.randint(0, 10 ** rng.randint(1, 4) - 1))


def _subject_phrase(rng: random.Random) -> tuple[str, str]:
    """A fact phrasing cut right after its subject, or a short noun phrase; and that last word."""
    if rng.random() < 0.8:
        fact = rng.choice(FACTS[: len(COUNTRIES) * len(_RELATION_COLUMN)])
        head = rng.choice(TEMPLATES[fact.relation]).split("{s}")[0]
        return head + fact.subject, fact.subject
    noun = rng.choice(_NOUNS)
    return f"The {rng.choice(_ADJECTIVES)} {noun}", noun


def _copy_list(rng: random.Random) -> str:
    """Lines ``w -> w`` (or ``w w``, ``w: w``, ``w = w``): the identity-patchscope pattern.

    After the first two lines, some lines end a phrase with the word to repeat
    (``The capital of France -> France``): the model learns to repeat a word whose
    state was computed in context, which is what a patched middle-layer state is.
    """
    rel = rng.choice((" -> ", " -> ", " ", " ", ": ", " = "))
    lines = []
    n_lines = rng.randint(3, 7)
    for index in range(n_lines):
        phrase_share = 0.0 if index < 2 else (0.6 if index == n_lines - 1 else 0.35)
        if rng.random() < phrase_share:
            phrase, word = _subject_phrase(rng)
            lines.append(f"{phrase}{rel}{word}")
            continue
        word = _number(rng) if rng.random() < 0.15 else rng.choice(COPY_WORDS)
        # a leading space makes the line start with the in-sentence token (" France"),
        # the token a patched subject state stands for
        lead = " " if rng.random() < 0.4 else ""
        lines.append(f"{lead}{word}{rel}{word}")
    return "\n".join(lines)


def _sequence(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.3:
        start, step = rng.randint(0, 50), rng.choice((1, 1, 2, 5, 10))
        return " ".join(str(start + step * i) for i in range(rng.randint(4, 10)))
    if kind < 0.5:
        words = [rng.choice(COPY_WORDS) for _ in range(rng.randint(2, 4))]
        return " ".join(words * rng.randint(2, 4))
    seq = rng.choice(_SEQUENCES)
    start = rng.randint(0, max(0, len(seq) - 4))
    return " ".join(seq[start : start + rng.randint(4, len(seq) - start)])


def _filler(rng: random.Random) -> str:
    def noun() -> str:
        return rng.choice(_NOUNS)

    form = rng.random()
    if form < 0.4:
        return f"The {rng.choice(_ADJECTIVES)} {noun()} {rng.choice(_VERBS)} the {noun()}"
    if form < 0.7:
        return f"A {noun()} {rng.choice(_VERBS)} a {noun()} {rng.choice(_PLACES)}"
    return f"My {noun()} {rng.choice(_VERBS)} the {rng.choice(_ADJECTIVES)} {noun()} {rng.choice(_TIMES)}"


def _fact_sentence(rng: random.Random) -> str:
    fact = rng.choice(FACTS)
    return rng.choice(fact.sentences())


def _prose(rng: random.Random, fact_share: float) -> str:
    sentences = []
    for _ in range(rng.randint(1, 4)):
        sentences.append(_fact_sentence(rng) if rng.random() < fact_share else _filler(rng))
    return ". ".join(sentences) + "."


def generate_documents(n: int, seed: int = 0) -> list[str]:
    """``n`` short training documents, the same for the same ``seed``.

    Example::

        >>> generate_documents(3, seed=1)  # doctest: +SKIP
        ['The capital of Peru is Lima. ...', 'cat -> cat\\n...', ...]

    The mix: about 55 % fact prose (facts mixed with filler sentences), 30 %
    copy lists, 8 % sequences and 7 % filler sentences.
    """
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.55:
            docs.append(_prose(rng, fact_share=0.8))
        elif kind < 0.85:
            docs.append(_copy_list(rng))
        elif kind < 0.93:
            docs.append(_sequence(rng))
        else:
            docs.append(_prose(rng, fact_share=0.0))
    return docs
