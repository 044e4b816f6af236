"""`sparse-rt export MODEL -o model.onnx`: MODEL is a .srt file (single model or ensemble) or a zoo
name, magnitude-pruned on the fly (seeded) to --sparsity."""

import os

import torch

from ..cli import _key_values, _shape


def add_parser(sub):
    p = sub.add_parser("export", help="export a sparse model to ONNX (portable or sparse flavour)")
    p.add_argument("model", metavar="MODEL", help="a .srt file, or a zoo model name (pruned with --sparsity)")
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.add_argument("--flavor", default="portable", choices=("portable", "sparse"),
                   help="portable: standard ONNX ops (stock onnxruntime); sparse: sparse_rt's ops "
                        "(run with sparse_rt.onnx.session)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: torch's)")
    p.add_argument("--input-shape", type=_shape, metavar="C,H,W",
                   help="one sample's input shape (zoo architectures know theirs)")
    p.add_argument("--batch", type=int, default=1, help="batch size of the exported graph")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip running onnxruntime on a random input and comparing with PyTorch")
    p.add_argument("--tolerance", type=float, default=1e-5,
                   help="largest accepted max|diff| / max|PyTorch output| of the check")
    p.add_argument("--external-data", action="store_true", default=None,
                   help="weights in OUTPUT.data (default: only above 1 GiB)")
    p.add_argument("--trust-arch", action="store_true",
                   help="allow a .srt whose architecture is an import string (importing runs code)")
    p.add_argument("--sparsity", type=float, default=0.9, help="zoo names: magnitude-pruning sparsity")
    p.add_argument("--arch-kwargs", type=_key_values, default={}, metavar="K=V,...",
                   help="zoo names: architecture arguments, e.g. depth=20")
    p.add_argument("--seed", type=int, default=0, help="zoo names: weight initialisation and input seed")
    p.set_defaults(run=run)


def _load(args):
    """(module, arch spec) from a .srt file or a zoo name."""
    from .. import models, sparsify
    from ..io import read_manifest
    from ..pruning import magnitude_prune

    if os.path.exists(args.model):
        from ..ensemble.srt import ensemble_info, load_ensemble
        from ..io import load

        manifest = read_manifest(args.model)
        info = ensemble_info(manifest)
        if info:
            ensemble = load_ensemble(args.model, trust_arch=args.trust_arch).eval()
            return ensemble, info["members"][0]["arch"]
        return load(args.model, trust_arch=args.trust_arch), manifest.get("arch")
    if args.model not in models.names():
        raise FileNotFoundError(f"{args.model} is neither a file nor a zoo model ({', '.join(models.names())})")
    spec = {"name": args.model, "kwargs": args.arch_kwargs}
    torch.manual_seed(args.seed)
    dense = models.create(args.model, **spec["kwargs"]).eval()
    return sparsify(magnitude_prune(dense, args.sparsity)).eval(), spec


def run(args):
    from .. import models
    from .export import export

    module, spec = _load(args)
    shape = args.input_shape
    if shape is None and spec is not None and ":" not in spec["name"]:
        shape = models.input_shape(spec["name"], **(spec.get("kwargs") or {}))
    if shape is None:
        raise ValueError("the input shape is unknown for this architecture: pass --input-shape C,H,W")
    x = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(args.seed))
    try:
        result = export(module, args.output, x, flavor=args.flavor, opset=args.opset, check=args.check,
                        external_data=args.external_data)
    except ImportError as e:  # onnxscript / onnxruntime / onnxruntime-extensions missing
        print(f"sparse-rt export: error: {e}")
        return 2
    print(result)
    if args.check and not result.max_rel_diff <= args.tolerance:
        print(f"check failed: relative difference {result.max_rel_diff:.3e} > tolerance {args.tolerance:g}")
        return 1
    return 0
