"""One home per vocabulary: `costmodel.vocab` defines each name list once, and the data keyed
by those names covers exactly them."""

from __future__ import annotations

import ast
import pathlib

from costmodel import vocab
from costmodel.optimizer import OPTIMIZER_STATES
from costmodel.presets_models import MODELS

ROOT = pathlib.Path(__file__).resolve().parents[2]
NAMES = [n for n in dir(vocab) if n.isupper()]


def _string_tuples(path: pathlib.Path):
    """(name, set of strings) of each module-level NAME = ("a", "b", ...) in `path`."""
    for node in ast.parse(path.read_text()).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        value = getattr(node, "value", None)
        if isinstance(target, ast.Name) and isinstance(value, (ast.Tuple, ast.List)) and value.elts \
                and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in value.elts):
            yield target.id, {e.value for e in value.elts}


def test_each_vocabulary_is_defined_once_in_the_tree():
    """No module spells out a vocabulary's names again (under its name or any other)."""
    sources = [p for pkg in ("costmodel", "measure", "analysis") for p in (ROOT / pkg).glob("*.py")]
    spelled = {name: set(getattr(vocab, name)) for name in NAMES}
    for path in sources:
        if path.name == "vocab.py":
            continue
        for name, values in _string_tuples(path):
            twins = [v for v, vs in spelled.items() if vs == values]
            assert not twins, f"{path.relative_to(ROOT)}: {name} repeats costmodel.vocab.{twins[0]}"



def test_the_data_keyed_by_a_vocabulary_covers_it():
    assert tuple(OPTIMIZER_STATES) == vocab.OPTIMIZERS
    assert set(vocab.KERNEL_DTYPES) <= set(__import__("costmodel.hardware").hardware.DTYPE_BYTES)
    assert set(vocab.LORA_METHODS) < set(vocab.METHODS)
    for shape in MODELS.values():
        assert shape.mlp in vocab.MLPS and shape.norm in vocab.NORMS
        assert shape.positional in vocab.POSITIONALS and shape.norm_placement in vocab.NORM_PLACEMENTS
