"""The engine room: what makes ``tinytriage.nn``'s layers fast, apart from the textbook.

``im2col`` (convolution as matrix multiplies), ``depthwise`` (one kernel per channel: K*K
multiply-adds over strided slabs, by bands of rows), ``pointwise`` (a 1x1 convolution as
one matrix multiply), ``pool`` (channels-last max pooling), ``norm`` (BatchNorm in two
passes over memory), ``fuse`` (conv, BatchNorm, ReLU or ReLU6 and pool folded into one
convolution for inference, inside the mobile blocks too), ``winograd`` (F(2x2, 3x3) for the
fused 3x3 convolutions), ``memory`` (channels-last layout, reused buffers, workspaces) and
``parallel`` (threads). Each computes what the reference loops in ``tinytriage.nn``
compute; tests hold them equal.
"""
