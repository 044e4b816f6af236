"""Argument types and option groups shared by the subcommands."""

import argparse
import functools
import json
import sys


def key_values(text):
    """'k=v,k2=v2' -> dict; values are read as JSON (numbers, true/false, null) or else strings."""
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"expected key=value, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = {"True": True, "False": False, "None": None}.get(value, value)
    return out


def renames(text):
    return {old: str(new) for old, new in key_values(text).items()}


def shape(text):
    try:
        sizes = tuple(int(s) for s in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected sizes >= 1 like 3,32,32, got {text!r}")
    return sizes


def _at_least(convert, least, what):
    """An argparse type: `convert(text)`, refused below `least` (and when nan)."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not value >= least:
            raise argparse.ArgumentTypeError(f"expected {what} >= {least}, got {text!r}")
        return value
    return parse


positive_int = _at_least(int, 1, "an integer")
non_negative_float = _at_least(float, 0, "a number")


def add_input_shape(p, help_text="one sample's input shape (zoo architectures know theirs)"):
    p.add_argument("--input-shape", type=shape, metavar="C,H,W", help=help_text)
    p.add_argument("--tokens", type=positive_int, metavar="VOCAB",
                   help="the input is token ids below VOCAB (BERT, GPT-2, T5: --input-shape is the sequence length)")


def add_trust_arch(p):
    p.add_argument("--trust-arch", action="store_true",
                   help="let a .srt import the module its architecture names (runs that code)")


def add_checkpoint_args(p, arch_required):
    """The options of reading a training checkpoint into an architecture (convert, inspect)."""
    from ..ingest import FORMS

    p.add_argument("--arch", required=arch_required, help="zoo name (see sparse_rt.models.names()) or "
                   "an import string pkg.module:factory")
    p.add_argument("--arch-kwargs", type=key_values, default={}, metavar="K=V,...",
                   help="keyword arguments of the architecture, e.g. depth=20,num_classes=100")
    p.add_argument("--masks", help="file of {name: 0/1 mask} (or a torch.ao sparsifier state_dict)")
    p.add_argument("--mask-form", default="auto", choices=["auto", *FORMS])
    p.add_argument("--rename", type=renames, default=None, metavar="OLD=NEW,...",
                   help="key prefixes to rename before matching the model's keys")
    p.add_argument("--format", default="auto", help="auto, csr, dense or bsr:RxC")
    p.add_argument("--min-sparsity", type=float, default=0.5)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where the model will run: --format auto plans for it with that device's cost model")
    p.add_argument("--cs-s0", type=float, default=0.0,
                   help="Continuous Sparsification mask_initial_value (scale 1/sigmoid(s0))")
    p.add_argument("--unsafe", action="store_true",
                   help="allow checkpoints holding pickled Python objects (only for files you trust)")
    add_input_shape(p, "one sample's input shape for multiply-add counts (zoo models know theirs)")


def checkpoint_options(args):
    """SparseModel.from_checkpoint's options from add_checkpoint_args' arguments (arch and masks apart)."""
    return dict(mask_form=args.mask_form, rename=args.rename, min_sparsity=args.min_sparsity, format=args.format,
                dtype=getattr(args, "dtype", None), unsafe=args.unsafe, cs_s0=args.cs_s0, device=args.device)


def progress():
    """Wraps the layer list with a progress bar on stderr (tqdm when installed, else lines)."""
    try:
        from tqdm import tqdm
    except ImportError:
        def lines(items):
            for i, item in enumerate(items, 1):
                print(f"  [{i}/{len(items)}] {item[0]}", file=sys.stderr)
                yield item
        return lines
    return functools.partial(tqdm, desc="converting", unit="layer", file=sys.stderr, leave=False)
