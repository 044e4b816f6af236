"""Convolution output size: the one Python copy of the formula (the C++ one is
csrc/kernels/conv_shape.h), used by the fake kernel, the ONNX shape inference and the baselines;
and the int64 limit the C++ op's checked arithmetic (csrc/kernels/checked_int.h) enforces."""

INT64_MAX = 2**63 - 1


def int64_product(*factors):
    """The product of non-negative ints, or None when it exceeds int64: where the C++ op's
    overflow-checked arithmetic refuses a size, so the layers and the ONNX checks refuse it too."""
    product = 1
    for factor in factors:
        product *= factor
    return product if product <= INT64_MAX else None


def conv2d_output_size(size, kernel, stride, padding, dilation):
    """Output length along one spatial dimension (zero padding on both sides)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv2d_output_hw(in_hw, kernel_size, stride, padding, dilation):
    """(out_h, out_w) of a 2-D convolution of an [.., H, W] input."""
    # Written out: a layer checks its residual's shape with it on every call, and the generator
    # took twice as long.
    return (conv2d_output_size(in_hw[0], kernel_size[0], stride[0], padding[0], dilation[0]),
            conv2d_output_size(in_hw[1], kernel_size[1], stride[1], padding[1], dilation[1]))
