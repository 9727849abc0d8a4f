"""Triton kernels (GPU, or the CPU under TRITON_INTERPRET=1). Each names its reference twin.

  prepare_fp4.prepare_activation_triton   twin of sparse.decompose.prepare_activation (NVFP4, MXFP4)

Not yet dispatched by `backend="auto"`: the kernels are verified bit-exact under the interpreter;
they become the CUDA default once verified on the GPU.
"""
