"""The engine room: what makes ``tinytriage.nn``'s layers fast, apart from the textbook.

``im2col`` (convolution as matrix multiplies), ``pool`` (channels-last max pooling),
``norm`` (BatchNorm in two passes over memory), ``fuse`` (conv, BatchNorm, ReLU and pool
folded into one convolution for inference), ``winograd`` (F(2x2, 3x3) for the fused 3x3
convolutions), ``memory`` (channels-last layout, reused buffers, workspaces) and
``parallel`` (threads). Each computes what the reference loops in ``tinytriage.nn``
compute; tests hold them equal.
"""
