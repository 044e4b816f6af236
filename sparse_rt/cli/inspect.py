"""`sparse-rt inspect PATH`: describe a .srt file or a checkpoint (layers, sizes, theoretical speedup)."""

from ..convert import checkpoint_summary
from ..ensemble import SparseEnsemble
from ..ingest import read_checkpoint
from ..metrics import state_dict_metrics
from ..resolve import resolve_model
from . import args as cli_args
from .describe import arch_text, print_model, print_source, totals


def add_parser(sub):
    p = sub.add_parser("inspect", help="describe a checkpoint or a .srt file: layers, sizes, speedup")
    p.add_argument("ckpt", metavar="PATH", help="a .srt file, a checkpoint file or an OpenLTH run folder")
    cli_args.add_checkpoint_args(p, arch_required=False)
    cli_args.add_trust_arch(p)
    p.set_defaults(run=run)


def run(args):
    if not args.ckpt.endswith(".srt") and not args.arch:
        return _checkpoint_alone(args)
    model, spec, _ = resolve_model(args.ckpt, arch=args.arch, arch_kwargs=args.arch_kwargs, trust_arch=args.trust_arch,
                                   masks=args.masks, **cli_args.checkpoint_options(args))
    if isinstance(model, SparseEnsemble):
        print(f"{args.ckpt}: sparse_rt .srt ensemble, arch {arch_text(spec)}")
        print(model.report())
        return 0
    if args.ckpt.endswith(".srt"):
        print(f"{args.ckpt}: sparse_rt .srt, arch {arch_text(spec)}")
    else:
        print(f"{args.ckpt}: checkpoint, form {model.source['form']}, arch {arch_text(spec)}")
    print_source(model.source)
    print_model(model, args.input_shape, args.tokens)
    return 0


def _checkpoint_alone(args):
    """Without an architecture: the checkpoint's masked weights, taken as Linear or Conv2d by rank."""
    ckpt = read_checkpoint(args.ckpt, mask_form=args.mask_form, masks=args.masks, unsafe=args.unsafe, cs_s0=args.cs_s0)
    print(ckpt.summary())
    print(checkpoint_summary(ckpt, min_sparsity=args.min_sparsity, format=args.format, device=args.device))
    print(totals(state_dict_metrics(ckpt.state_dict), "convolutions need --arch"))
    return 0
