"""Convolution output size: the one Python copy of the formula (the C++ one is
csrc/kernels/conv_shape.h), used by the fake kernel, the ONNX shape inference and the baselines."""


def conv2d_output_size(size, kernel, stride, padding, dilation):
    """Output length along one spatial dimension (zero padding on both sides)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv2d_output_hw(in_hw, kernel_size, stride, padding, dilation):
    """(out_h, out_w) of a 2-D convolution of an [.., H, W] input."""
    return tuple(conv2d_output_size(in_hw[i], kernel_size[i], stride[i], padding[i], dilation[i]) for i in range(2))
