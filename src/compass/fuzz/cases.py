"""The fuzz cases: every category, and case i of a seed."""
from __future__ import annotations

import random

from .damage import DAMAGES
from .format import Case, Sample
from .hostile import HOSTILE, seeds

CATEGORIES = {**DAMAGES, **HOSTILE}  # name: (generator, weight in a random draw)
LOADERS = ("weights", "manifest", "checkpoint")  # judged by `worker.load_case`; "cli" by `commands.run_command`


def make_case(seed: int, index: int, corpus: list[Sample]) -> Case:
    """Case `index` of `seed`: the first file cut at every byte (cases 0 .. its length - 1), the `hostile.seeds`, then
    random draws."""
    first = corpus[0].data
    if index < len(first):
        return Case(index, "truncate", f"every cut ({index} of {len(first)})", first[:index], corpus[0].model, 0,
                    expect=("error",))
    hostile = seeds(corpus)
    if index < len(first) + len(hostile):
        return Case(index, model=corpus[0].model, **hostile[index - len(first)])
    rng = random.Random(seed * 1_000_003 + index)
    names = list(CATEGORIES)
    category = rng.choices(names, [CATEGORIES[n][1] for n in names])[0]
    base = rng.choice([i for i, s in enumerate(corpus) if not s.big])
    fields = {"base": base, "category": category, **CATEGORIES[category][0](rng, corpus[base], corpus)}
    return Case(index, data=bytes(fields.pop("data")), model=corpus[base].model, **fields)
