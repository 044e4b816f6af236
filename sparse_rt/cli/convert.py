"""`sparse-rt convert CKPT --arch ARCH -o OUT.srt` (or --ensemble DIR): a training checkpoint to a .srt file."""

import os

from ..convert import from_checkpoint, parse_dtype
from ..ensemble import SparseEnsemble
from . import args as cli_args
from .describe import print_model, print_source


def add_parser(sub):
    p = sub.add_parser("convert", help="convert a training checkpoint to a .srt file")
    p.add_argument("ckpt", nargs="?", help="checkpoint file or OpenLTH run folder")
    p.add_argument("--ensemble", metavar="DIR", help="convert the member checkpoints in DIR (natural order: "
                   "member_2 before member_10) into one ensemble .srt")
    cli_args.add_checkpoint_args(p, arch_required=True)
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="value dtype of the result")
    p.add_argument("--fuse", action="store_true", help="fold BatchNorms and fuse residual sums and ReLUs into "
                   "the sparse kernels (SparseModel.fuse; the file records it)")
    p.add_argument("--store-weights", choices=["bf16", "fp16"],
                   help="keep the sparse layers' values in 16 bits, activations in fp32 (SparseModel.store_weights, "
                        "after --fuse; outputs move by the weights' rounding, about 1e-3 relative with bf16)")
    p.add_argument("-o", "--output", required=True, help="the .srt file to write")
    p.set_defaults(run=run)


def run(args):
    if args.ensemble:
        if args.fuse or args.store_weights:
            raise ValueError("--fuse and --store-weights apply to single models; an ensemble fuses its members' "
                             "layers itself")
        ensemble = _ensemble(args)
        ensemble.save(args.output)
        print(ensemble.report())
    else:
        if not args.ckpt:
            raise ValueError("give a checkpoint to convert, or --ensemble DIR")
        model = from_checkpoint(args.ckpt, args.arch, masks=args.masks, arch_kwargs=args.arch_kwargs,
                                progress=cli_args.progress(), **cli_args.checkpoint_options(args))
        if args.fuse:
            print(f"fused: {model.eval().fuse()}")
        if args.store_weights:
            model.store_weights(parse_dtype(args.store_weights))
            print(f"sparse weights stored in {args.store_weights}")
        model.save(args.output)
        print_source(model.source)
        print_model(model, args.input_shape, args.tokens)
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 2**20:.2f} MiB)")
    return 0


def _ensemble(args):
    """The SparseEnsemble of the member checkpoints in --ensemble DIR (natural order)."""
    if args.ckpt:
        raise ValueError(f"give either a checkpoint ({args.ckpt}) or --ensemble DIR, not both")
    if args.masks:
        raise ValueError("--masks names one checkpoint's masks; --ensemble members must carry their own")
    return SparseEnsemble.from_checkpoints(args.ensemble, args.arch, arch_kwargs=args.arch_kwargs,
                                           **cli_args.checkpoint_options(args))
