"""`sparse-rt export MODEL -o model.onnx`: MODEL is a .srt file (single model or ensemble), a
checkpoint with --arch, or a zoo name magnitude-pruned on the fly (seeded) to --sparsity."""

import os

from ..inputs import example_input
from ..resolve import resolve_model
from . import args as cli_args

ZOO_SPARSITY = 0.9


def add_parser(sub):
    p = sub.add_parser("export", help="export a sparse model to ONNX (portable or sparse flavour)")
    p.add_argument("model", metavar="MODEL", help="a .srt file, a checkpoint (with --arch), or a zoo model name "
                   "(pruned with --sparsity)")
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.add_argument("--flavor", default="portable",
                   help="portable: standard ONNX ops (stock onnxruntime); sparse: sparse_rt's ops "
                        "(run with sparse_rt.onnx.session)")
    p.add_argument("--opset", type=cli_args.positive_int, default=None, help="ONNX opset (default: torch's)")
    cli_args.add_input_shape(p)
    p.add_argument("--batch", type=cli_args.positive_int, default=1, help="batch size of the exported graph")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip running onnxruntime on a random input and comparing with PyTorch")
    p.add_argument("--tolerance", type=cli_args.non_negative_float, default=1e-5,
                   help="largest accepted max|diff| / max|PyTorch output| of the check")
    p.add_argument("--external-data", action="store_true", default=None,
                   help="weights in OUTPUT.data (default: only above 1 GiB)")
    cli_args.add_trust_arch(p)
    p.add_argument("--arch", help="architecture of a checkpoint: zoo name or pkg.module:factory")
    p.add_argument("--sparsity", type=float, default=None,
                   help=f"zoo names: magnitude-pruning sparsity (default {ZOO_SPARSITY})")
    p.add_argument("--arch-kwargs", type=cli_args.key_values, default={}, metavar="K=V,...",
                   help="architecture arguments, e.g. depth=20")
    p.add_argument("--seed", type=int, default=0, help="zoo names: weight initialisation and input seed")
    p.set_defaults(run=run)


def run(args):
    from ..onnx import export  # onnx is an optional dependency (the onnx extra)

    sparsity = args.sparsity
    if sparsity is None and not os.path.exists(args.model):
        sparsity = ZOO_SPARSITY
    module, _, shape = resolve_model(args.model, arch=args.arch, arch_kwargs=args.arch_kwargs, sparsity=sparsity,
                                     seed=args.seed, trust_arch=args.trust_arch)
    shape = args.input_shape or shape
    if shape is None:
        raise ValueError("the input shape is unknown for this architecture: pass --input-shape C,H,W")
    x = example_input(args.batch, shape, tokens=args.tokens, seed=args.seed)
    result = export(module.eval(), args.output, x, flavor=args.flavor, opset=args.opset, check=args.check,
                    external_data=args.external_data)
    print(result)
    if args.check and not result.max_rel_diff <= args.tolerance:
        raise ValueError(f"check failed: relative difference {result.max_rel_diff:.3e} > tolerance {args.tolerance:g}")
    return 0
