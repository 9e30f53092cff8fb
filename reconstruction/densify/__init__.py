"""Pure-PyTorch building blocks of the generative-densification point decoder (serialization, submanifold sparse
convolution, serialized patch attention, learned masks): no spconv / torch_scatter / torch_geometric needed, and
every operator runs on CPU and CUDA alike."""
