"""The sparse-rt command line. Each subcommand registers itself in `_SUBCOMMANDS`."""

import argparse
import functools
import json
import os
import sys

from .ingest import IngestError
from .io import SrtError


def _demo(sub):
    p = sub.add_parser("demo", help="prune a zoo model, convert it, check it and time it against dense")
    from .demo import DEMO_INPUTS

    p.add_argument("--model", default="bert_encoder", choices=sorted(DEMO_INPUTS))
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--time", type=float, default=2.0, help="seconds of timing per engine")

    def run(args):
        from .demo import run_demo

        result = run_demo(args.model, args.sparsity, args.batch, args.time)
        return 0 if result["max_rel_diff"] <= 1e-4 else 1

    p.set_defaults(run=run)


def _key_values(text):
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


def _renames(text):
    return {old: str(new) for old, new in _key_values(text).items()}


def _shape(text):
    try:
        return tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 3,32,32, got {text!r}") from None


def _progress():
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


def _add_checkpoint_args(p, arch_required):
    from .ingest import FORMS

    p.add_argument("--arch", required=arch_required, help="zoo name (see sparse_rt.models.names()) or "
                   "an import string pkg.module:factory")
    p.add_argument("--arch-kwargs", type=_key_values, default={}, metavar="K=V,...",
                   help="keyword arguments of the architecture, e.g. depth=20,num_classes=100")
    p.add_argument("--masks", help="file of {name: 0/1 mask} (or a torch.ao sparsifier state_dict)")
    p.add_argument("--mask-form", default="auto", choices=["auto", *FORMS])
    p.add_argument("--rename", type=_renames, default=None, metavar="OLD=NEW,...",
                   help="key prefixes to rename before matching the model's keys")
    p.add_argument("--format", default="auto", help="auto, csr, dense or bsr:RxC")
    p.add_argument("--min-sparsity", type=float, default=0.5)
    p.add_argument("--cs-s0", type=float, default=0.0,
                   help="Continuous Sparsification mask_initial_value (scale 1/sigmoid(s0))")
    p.add_argument("--unsafe", action="store_true",
                   help="allow checkpoints holding pickled Python objects (only for files you trust)")
    p.add_argument("--input-shape", type=_shape, metavar="C,H,W",
                   help="one sample's input shape for multiply-add counts (zoo models know theirs)")


def _checkpoint_options(args):
    return dict(mask_form=args.mask_form, arch_kwargs=args.arch_kwargs, rename=args.rename,
                min_sparsity=args.min_sparsity, format=args.format, dtype=getattr(args, "dtype", None),
                unsafe=args.unsafe, cs_s0=args.cs_s0)


def _from_checkpoint(args, progress=None):
    from .convert import from_checkpoint

    return from_checkpoint(args.ckpt, args.arch, masks=args.masks, progress=progress, **_checkpoint_options(args))


def _ensemble(args):
    """The SparseEnsemble of the member checkpoints in --ensemble DIR (natural order)."""
    from .ensemble import SparseEnsemble

    if args.ckpt:
        raise ValueError(f"give either a checkpoint ({args.ckpt}) or --ensemble DIR, not both")
    if args.masks:
        raise ValueError("--masks names one checkpoint's masks; --ensemble members must carry their own")
    return SparseEnsemble.from_checkpoints(args.ensemble, args.arch, **_checkpoint_options(args))


def _input_shape(args, spec):
    from . import models
    from .arch import is_import_string

    if args.input_shape or spec is None or is_import_string(spec["name"]):
        return args.input_shape
    return models.input_shape(spec["name"], **spec["kwargs"])


def _totals(metrics, missing_macs_hint):
    line = (f"parameters {metrics.params:,}  nonzeros {metrics.nonzeros:,}  "
            f"compression ratio {metrics.compression_ratio:.2f}x  ")
    if metrics.theoretical_speedup is None:
        return line + f"theoretical speedup n/a ({missing_macs_hint})"
    shape = f" on {list(metrics.input_shape)}" if metrics.input_shape else ""
    return line + (f"theoretical speedup {metrics.theoretical_speedup:.2f}x (multiply-adds per sample{shape}: "
                   f"dense {metrics.dense_macs:,}, nonzero {metrics.nonzero_macs:,})")


def _arch_text(spec):
    if spec is None:
        return "an nn.Module instance"
    return f"{spec['name']}({', '.join(f'{k}={v!r}' for k, v in spec['kwargs'].items())})"


def _report(model, args):
    from .metrics import model_metrics

    print(model.summary())
    print(_totals(model_metrics(model, _input_shape(args, model.arch_spec)), "pass --input-shape"))


def _print_source(source):
    if source:
        print(f"source: {source.get('file')} [{source.get('form')}] sha256 {source.get('sha256')}")
        for note in source.get("notes", []):
            print(f"  - {note}")


def _convert(sub):
    p = sub.add_parser("convert", help="convert a training checkpoint to a .srt file")
    p.add_argument("ckpt", nargs="?", help="checkpoint file or OpenLTH run folder")
    p.add_argument("--ensemble", metavar="DIR", help="convert the member checkpoints in DIR (natural order: "
                   "member_2 before member_10) into one ensemble .srt")
    _add_checkpoint_args(p, arch_required=True)
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="value dtype of the result")
    p.add_argument("-o", "--output", required=True, help="the .srt file to write")

    def run(args):
        if args.ensemble:
            ensemble = _ensemble(args)
            ensemble.save(args.output)
            print(ensemble.report())
            print(f"wrote {args.output} ({os.path.getsize(args.output) / 2**20:.2f} MiB)")
            return 0
        if not args.ckpt:
            raise ValueError("give a checkpoint to convert, or --ensemble DIR")
        model = _from_checkpoint(args, progress=_progress())
        model.save(args.output)
        _print_source(model.source)
        _report(model, args)
        print(f"wrote {args.output} ({os.path.getsize(args.output) / 2**20:.2f} MiB)")
        return 0

    p.set_defaults(run=run)


def _inspect(sub):
    p = sub.add_parser("inspect", help="describe a checkpoint or a .srt file: layers, sizes, speedup")
    p.add_argument("ckpt", metavar="PATH", help="a .srt file, a checkpoint file or an OpenLTH run folder")
    _add_checkpoint_args(p, arch_required=False)
    p.add_argument("--trust-arch", action="store_true",
                   help="let a .srt import the module its architecture names (runs that code)")

    def run(args):
        if args.ckpt.endswith(".srt"):
            from .ensemble import SparseEnsemble
            from .ensemble.srt import ensemble_info
            from .io import load, read_manifest

            if ensemble_info(read_manifest(args.ckpt)):
                ensemble = SparseEnsemble.load(args.ckpt, args.arch, arch_kwargs=args.arch_kwargs,
                                               trust_arch=args.trust_arch)
                print(f"{args.ckpt}: sparse_rt .srt ensemble, arch {_arch_text(ensemble.members[0].arch_spec)}")
                print(ensemble.report())
                return 0
            model = load(args.ckpt, args.arch, arch_kwargs=args.arch_kwargs, trust_arch=args.trust_arch)
            print(f"{args.ckpt}: sparse_rt .srt, arch {_arch_text(model.arch_spec)}")
            _print_source(model.source)
            _report(model, args)
        elif args.arch:
            model = _from_checkpoint(args)
            print(f"{args.ckpt}: checkpoint, form {model.source['form']}, arch {_arch_text(model.arch_spec)}")
            _print_source(model.source)
            _report(model, args)
        else:
            from .convert import checkpoint_summary
            from .ingest import read_checkpoint
            from .metrics import state_dict_metrics

            ckpt = read_checkpoint(args.ckpt, mask_form=args.mask_form, masks=args.masks, unsafe=args.unsafe,
                                   cs_s0=args.cs_s0)
            print(ckpt.summary())
            print(checkpoint_summary(ckpt, min_sparsity=args.min_sparsity, format=args.format))
            print(_totals(state_dict_metrics(ckpt.state_dict), "convolutions need --arch"))
        return 0

    p.set_defaults(run=run)


def _bench(sub):
    from .bench.command import add_parser

    add_parser(sub)


def _export(sub):
    from .onnx.command import add_parser

    add_parser(sub)


_SUBCOMMANDS = [_demo, _convert, _inspect, _bench, _export]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="sparse-rt", description="sparse inference runtime for PyTorch")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError, KeyError, IngestError, SrtError) as e:
        message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"sparse-rt {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
